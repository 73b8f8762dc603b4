//! Network and device factors: what the host app knows about where it runs, attached to
//! every sample so that degradation can be split by network.

use serde::Serialize;

/// The kind of network the device is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkType {
    /// Not reported.
    Unknown,
    /// Wi-Fi.
    Wifi,
    /// Mobile data.
    Cellular,
    /// Wired.
    Ethernet,
    /// No network.
    Offline,
}

impl NetworkType {
    /// Every network type.
    pub const ALL: [NetworkType; 5] = [
        NetworkType::Unknown,
        NetworkType::Wifi,
        NetworkType::Cellular,
        NetworkType::Ethernet,
        NetworkType::Offline,
    ];

    /// The label value used in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Unknown => "unknown",
            NetworkType::Wifi => "wifi",
            NetworkType::Cellular => "cellular",
            NetworkType::Ethernet => "ethernet",
            NetworkType::Offline => "offline",
        }
    }
}

/// A reading of the device's situation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSample {
    /// Network type.
    pub network: NetworkType,
    /// Signal strength 0–100, if known.
    pub signal: Option<u8>,
    /// Whether the app is in the background (OSes throttle background sockets).
    pub background: bool,
    /// Operating system, free text ("unknown" when not reported).
    pub os: String,
}

/// Implemented by the host app; read at every sample. Must be cheap (an atomic read).
pub trait DeviceContext: Send + Sync + 'static {
    /// The current situation.
    fn sample(&self) -> DeviceSample;

    /// Only the network type: what every vendor call is labelled with, so it should not
    /// allocate (the default builds a whole sample).
    fn network(&self) -> NetworkType {
        self.sample().network
    }
}

/// The default: nothing is known.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnknownDevice;

impl DeviceContext for UnknownDevice {
    fn network(&self) -> NetworkType {
        NetworkType::Unknown
    }

    fn sample(&self) -> DeviceSample {
        DeviceSample {
            network: NetworkType::Unknown,
            signal: None,
            background: false,
            os: "unknown".to_string(),
        }
    }
}
