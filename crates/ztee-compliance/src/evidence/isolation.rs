//! The VMs running right now, seen from the host: each ztee VMM process, the network devices its
//! guest has (there should be none: no NIC is the segmentation control), and the network
//! interfaces of the namespace it runs in (only `lo` when the jailer put it in its own).
//!
//! A QEMU's devices are on its command line. A Firecracker's are configured over its API, so the
//! report asks each one (`GET /vm/config` on its API socket, reached through the process's own
//! root, i.e. its chroot) for its `network-interfaces`. A Firecracker that does not answer counts
//! as having a network: what cannot be shown is not claimed.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

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
        let api_socket = (program_name == "firecracker")
            .then(|| value_after(&args, "--api-sock"))
            .flatten();
        if !is_qemu && api_socket.is_none() {
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
        let (name, devices) = match &api_socket {
            Some(socket) => (
                value_after(&args, "--id"),
                firecracker_network(&dir.join("root").join(socket.trim_start_matches('/'))),
            ),
            None => (value_after(&args, "-name"), network_devices(&args)),
        };
        evidence.running_vmms.push(VmmEvidence {
            pid,
            vmm: program_name.to_string(),
            name,
            network_devices: devices,
            namespace_interfaces: interfaces,
            own_network_namespace: netns.is_some() && netns != own_netns,
        });
    }
    evidence.running_vmms.sort_by_key(|v| v.pid);
    evidence
}

fn value_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The network interfaces a Firecracker VM was configured with, from its API; an entry saying
/// why when the API does not answer.
fn firecracker_network(api_socket: &Path) -> Vec<String> {
    match firecracker_config(api_socket) {
        Ok(config) => match config.get("network-interfaces") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(interfaces)) => interfaces
                .iter()
                .map(|i| {
                    format!(
                        "network interface {} (host {})",
                        i["iface_id"].as_str().unwrap_or("?"),
                        i["host_dev_name"].as_str().unwrap_or("?")
                    )
                })
                .collect(),
            Some(_) => vec!["unknown: `network-interfaces` is not a list".to_string()],
        },
        Err(why) => vec![format!(
            "unknown: the VM's configuration could not be read ({why})"
        )],
    }
}

/// `GET /vm/config` on a Firecracker API socket.
fn firecracker_config(api_socket: &Path) -> Result<serde_json::Value, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(api_socket)
        .map_err(|e| format!("{}: {e}", api_socket.display()))?;
    let timeout = Some(Duration::from_secs(2));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /vm/config HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("GET /vm/config answered {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("GET /vm/config: {e}"))
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
#[allow(clippy::unwrap_used)]
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

    /// A process table with one Firecracker whose API answers `GET /vm/config` with `config`
    /// (`None`: nothing listens on its socket).
    fn firecracker_table(pid: u32, config: Option<&'static str>) -> tempfile::TempDir {
        let proc_root = tempfile::Builder::new()
            .prefix("zp")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = proc_root.path().join(pid.to_string());
        std::fs::create_dir_all(dir.join("root/run")).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::write(
            dir.join("cmdline"),
            [
                "/usr/bin/firecracker",
                "--id",
                "sbx-1",
                "--start-time-us",
                "1",
                "--api-sock",
                "/run/firecracker.socket",
                "--level",
                "Warning",
                "",
            ]
            .join("\0"),
        )
        .unwrap();
        std::fs::write(dir.join("net/dev"), "h1\nh2\n    lo: 0 0\n").unwrap();
        let socket = dir.join("root/run/firecracker.socket");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        match config {
            Some(body) => {
                std::thread::spawn(move || {
                    let (mut stream, _) = listener.accept().unwrap();
                    let mut request = [0u8; 1024];
                    let n = stream.read(&mut request).unwrap();
                    assert!(request[..n].starts_with(b"GET /vm/config HTTP/1.1\r\n"));
                    let answer = format!(
                        "HTTP/1.1 200 \r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(answer.as_bytes()).unwrap();
                });
            }
            // A socket file nobody answers on.
            None => drop(listener),
        }
        proc_root
    }

    #[test]
    fn asks_each_firecracker_for_its_network_interfaces() {
        let clean = firecracker_table(
            31,
            Some(
                r#"{"machine-config": {"vcpu_count": 1}, "network-interfaces": [], "vsock": {"guest_cid": 3}}"#,
            ),
        );
        let evidence = gather(clean.path());
        assert_eq!(evidence.running_vmms.len(), 1, "{evidence:?}");
        let vm = &evidence.running_vmms[0];
        assert_eq!(
            (vm.vmm.as_str(), vm.name.as_deref()),
            ("firecracker", Some("sbx-1"))
        );
        assert!(vm.guest_has_no_network(), "{vm:?}");
        assert_eq!(vm.namespace_interfaces, ["lo"]);

        let with_nic = firecracker_table(
            32,
            Some(r#"{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}]}"#),
        );
        let vm = &gather(with_nic.path()).running_vmms[0];
        assert_eq!(vm.network_devices, ["network interface eth0 (host tap0)"]);
        assert!(!vm.guest_has_no_network());

        // A Firecracker that does not answer is not taken to be without a network.
        let silent = firecracker_table(33, None);
        let vm = &gather(silent.path()).running_vmms[0];
        assert!(!vm.guest_has_no_network());
        assert!(
            vm.network_devices[0].starts_with("unknown: the VM's configuration could not be read"),
            "{vm:?}"
        );
    }

    #[test]
    fn parses_interface_names() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 0 0 0\n  eth0: 1 2 3\n";
        assert_eq!(parse_net_dev(text), vec!["lo", "eth0"]);
    }
}
