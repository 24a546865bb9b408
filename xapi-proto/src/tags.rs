//! Keys of `other_config` and `xenstore_data` that matter to both sides.

/// XenCenter hides objects whose `other_config` carries this key set to "true".
pub const HIDE_FROM_XENCENTER: &str = "HideFromXenCenter";

/// Prefix of the `xenstore_data` keys an appliance reads its settings from.
pub const VM_DATA_PREFIX: &str = "vm-data/";
/// `xenstore_data` key: "true" asks the appliance to use DHCP.
pub const VM_DATA_DHCP: &str = "vm-data/dhcp";
/// `xenstore_data` key: static IPv4 address.
pub const VM_DATA_IP: &str = "vm-data/ip";
/// `xenstore_data` key: netmask for the static address.
pub const VM_DATA_NETMASK: &str = "vm-data/nm";
/// `xenstore_data` key: default gateway.
pub const VM_DATA_GATEWAY: &str = "vm-data/gw";
/// `xenstore_data` key: DNS server.
pub const VM_DATA_DNS: &str = "vm-data/dns";
/// `xenstore_data` key: host name of the appliance.
pub const VM_DATA_HOSTNAME: &str = "vm-data/hostname";
/// `xenstore_data` key the appliance writes once it has an address.
pub const VM_DATA_ASSIGNED_IP: &str = "vm-data/assigned-ip";
