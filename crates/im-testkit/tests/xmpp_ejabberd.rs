//! The XMPP adapter against a real ejabberd (`tests/ejabberd/ejabberd.sh`): the shared XMPP
//! tests (`tests/xmpp/mod.rs`) with `IM_EJABBERD_ADDR` and `IM_REQUIRE_EJABBERD`, plus what
//! only this deployment shows (XEP-0013 discovered).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use im_testkit::cases::Target;
use im_testkit::harness::{EJABBERD, XmppServer};

/// The server every test in `xmpp` runs against.
const SERVER: XmppServer = EJABBERD;
/// Its case-library target (the contract cases).
const TARGET: Target = Target::XmppEjabberd;

mod xmpp;
