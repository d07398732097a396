//! The VMs running right now, seen from the host: each ztee VMM process, the network devices on
//! its command line (there should be none: no NIC is the segmentation control), and the network
//! interfaces of the namespace it runs in (only `lo` when the jailer put it in its own).

use std::path::Path;

use serde::Serialize;

/// The virtio-serial port name every ztee guest agent listens on; it marks a QEMU process as
/// one of ours.
const AGENT_PORT_MARKER: &str = "name=ztee.agent";
/// QEMU options that give a guest a network device.
const NETWORK_OPTIONS: [&str; 3] = ["-netdev", "-nic", "-net"];
const NETWORK_DEVICE_PREFIXES: [&str; 4] = ["virtio-net", "e1000", "rtl8139", "vhost-user-net"];

#[derive(Debug, Clone, Default, Serialize)]
pub struct IsolationEvidence {
    pub running_vmms: Vec<VmmEvidence>,
    /// Processes that could not be examined (they exited while being read, or permission).
    pub unreadable: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmmEvidence {
    pub pid: u32,
    pub vmm: String,
    /// The `-name` the VM was given (the sandbox or pool id).
    pub name: Option<String>,
    /// Network options or devices found on the command line.
    pub network_devices: Vec<String>,
    /// Interfaces in the process's network namespace.
    pub namespace_interfaces: Vec<String>,
    /// Runs in a network namespace other than ours (the jailer's).
    pub own_network_namespace: bool,
}

impl VmmEvidence {
    /// The guest cannot reach any network: no device, and the VMM itself sits in a namespace
    /// with nothing but loopback (or, unjailed, still has no device to give the guest).
    pub fn guest_has_no_network(&self) -> bool {
        self.network_devices.is_empty()
    }
}

pub fn gather(proc_root: &Path) -> IsolationEvidence {
    let mut evidence = IsolationEvidence::default();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return evidence;
    };
    let own_netns = std::fs::read_link(proc_root.join("self/ns/net")).ok();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(raw) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(program) = args.first() else {
            continue;
        };
        let program_name = program.rsplit('/').next().unwrap_or(program);
        let is_qemu = program_name.starts_with("qemu-system-")
            && args.iter().any(|a| a.contains(AGENT_PORT_MARKER));
        if !is_qemu {
            continue;
        }
        let interfaces = match std::fs::read_to_string(dir.join("net/dev")) {
            Ok(text) => parse_net_dev(&text),
            Err(_) => {
                evidence.unreadable += 1;
                continue;
            }
        };
        let netns = std::fs::read_link(dir.join("ns/net")).ok();
        evidence.running_vmms.push(VmmEvidence {
            pid,
            vmm: program_name.to_string(),
            name: args
                .iter()
                .position(|a| a == "-name")
                .and_then(|i| args.get(i + 1))
                .cloned(),
            network_devices: network_devices(&args),
            namespace_interfaces: interfaces,
            own_network_namespace: netns.is_some() && netns != own_netns,
        });
    }
    evidence.running_vmms.sort_by_key(|v| v.pid);
    evidence
}

/// The network options and devices on a QEMU command line.
pub fn network_devices(args: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let value = args.get(i + 1).map_or("", String::as_str);
        // `-nic none` / `-net none` say there is no network: not a device.
        if NETWORK_OPTIONS.contains(&arg.as_str()) && value != "none" {
            found.push(format!("{arg} {value}"));
        }
        if arg == "-device" {
            if let Some(device) = args.get(i + 1) {
                if NETWORK_DEVICE_PREFIXES
                    .iter()
                    .any(|p| device.starts_with(p))
                {
                    found.push(format!("-device {device}"));
                }
            }
        }
    }
    found
}

/// Interface names from `/proc/<pid>/net/dev` (two header lines, then `name: counters`).
fn parse_net_dev(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            line.split_once(':')
                .map(|(name, _)| name.trim().to_string())
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn finds_network_options_and_devices_but_not_other_devices() {
        let clean = args("qemu-system-x86_64 -nodefaults -device virtio-blk-device,drive=image -device virtserialport,chardev=agent,name=ztee.agent");
        assert!(network_devices(&clean).is_empty());
        let nic = args(
            "qemu-system-x86_64 -netdev user,id=n0 -device virtio-net-device,netdev=n0 -nic none",
        );
        assert_eq!(
            network_devices(&nic),
            vec![
                "-netdev user,id=n0".to_string(),
                "-device virtio-net-device,netdev=n0".to_string(),
            ]
        );
    }

    #[test]
    fn parses_interface_names() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 0 0 0\n  eth0: 1 2 3\n";
        assert_eq!(parse_net_dev(text), vec!["lo", "eth0"]);
    }
}
