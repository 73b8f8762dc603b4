//! The XMPP adapter against a real Prosody (`tests/prosody/prosody.sh`): the shared XMPP
//! tests (`tests/xmpp/mod.rs`) with `IM_PROSODY_ADDR` and `IM_REQUIRE_PROSODY`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use im_testkit::cases::Target;
use im_testkit::harness::{PROSODY, XmppServer};

/// The server every test in `xmpp` runs against.
const SERVER: XmppServer = PROSODY;
/// Its case-library target (the contract cases).
const TARGET: Target = Target::Xmpp;

mod xmpp;
