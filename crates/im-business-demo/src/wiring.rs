//! The only module of the demo that names a concrete vendor: it builds the environment the
//! business code runs on. Everything else talks to `im_service::Vendor`.

use im_service::memory::{MemoryClient, MemoryVendor};
use im_service::{Credentials, Timestamp, UserId};

/// The vendor the demo runs on.
pub struct Environment {
    vendor: MemoryVendor,
}

impl Environment {
    /// The embedded default: the in-process vendor, nothing to install or start.
    pub fn embedded() -> Self {
        Self {
            vendor: MemoryVendor::default(),
        }
    }

    /// The vendor's name for display.
    pub fn vendor_name(&self) -> &'static str {
        "memory"
    }

    /// Registers a user and returns their credentials.
    pub fn user(&self, name: &str) -> Credentials {
        self.vendor.register_user(&UserId::new(name))
    }

    /// A new client handle for one device.
    pub fn client(&self) -> MemoryClient {
        self.vendor.client()
    }

    /// The current time, for the client-side timestamp of outgoing messages.
    pub fn now(&self) -> Timestamp {
        self.vendor.now()
    }
}
