//! Runs the vendor contract suite against the reference vendor over TCP on 127.0.0.1:0.

im_testkit::vendor_contract_tests!(im_testkit::cases::Target::Reference);
