//! Runs the vendor contract suite against the in-process `MemoryVendor`.

im_testkit::vendor_contract_tests!(|cfg| async move { im_testkit::MemoryHarness::new(cfg) });
