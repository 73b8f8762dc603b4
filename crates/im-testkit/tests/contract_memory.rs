//! Runs the vendor contract suite against the in-process `MemoryVendor`.

im_testkit::vendor_contract_tests!(im_testkit::cases::Target::Memory);
