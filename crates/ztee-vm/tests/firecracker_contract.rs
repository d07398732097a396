//! Contract tests of the Firecracker backend against a stand-in of Firecracker's API socket
//! (tests/support/firecracker_api.rs: the v1.10 API rules, checked on every request), and of the
//! hybrid vsock handshake against real Unix-socket peers. Firecracker itself cannot run on this
//! project's test machines (their KVM does not boot ordinary guests); docs/firecracker.md says
//! how to check a KVM host by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/firecracker_api.rs"]
mod firecracker_api;

use std::path::Path;
use std::time::{Duration, Instant};

use firecracker_api::{StandIn, POST_BOOT, PRE_BOOT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use ztee_vm::backend::firecracker::{
    self, vsock, ApiClient, ApiError, BootConfig, Controller, FirecrackerConfig, HandshakeError,
    SnapshotFiles,
};

/// A chroot-like root with the files a VM boots from, and a stand-in API socket.
fn stand_in(dir: &Path) -> StandIn {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("run")).unwrap();
    for file in ["vmlinux", "initrd.img", "rootfs.img"] {
        std::fs::write(root.join(file), b"x").unwrap();
    }
    StandIn::start(&dir.join("api.sock"), &root)
}

fn config() -> FirecrackerConfig {
    FirecrackerConfig {
        disk_bytes_per_sec: 100 * 1024 * 1024,
        disk_ops_per_sec: 5000,
        entropy_bytes_per_sec: 4096,
        ..FirecrackerConfig::default()
    }
}

fn boot() -> BootConfig {
    BootConfig {
        kernel: "/vmlinux".into(),
        initramfs: "/initrd.img".into(),
        rootfs: "/rootfs.img".into(),
        vsock_uds: "/run/agent.vsock".into(),
        memory_mib: 256,
        vcpus: 2,
        scratch_mib: 128,
    }
}

fn controller(api: &StandIn) -> Controller {
    Controller::new(ApiClient::new(&api.socket), config())
}

#[tokio::test]
async fn boot_sequence_is_exactly_the_documented_calls() {
    let dir = tempfile::tempdir().unwrap();
    let api = stand_in(dir.path());
    let vm = controller(&api);
    vm.configure(&boot()).await.unwrap();
    vm.start().await.unwrap();
    let calls = api.calls();
    let got: Vec<(String, String, Value)> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone(), c.body.clone()))
        .collect();
    let expected = vec![
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false}),
        ),
        (
            "PUT",
            "/boot-source",
            json!({
                "kernel_image_path": "/vmlinux",
                "boot_args": "console=ttyS0 quiet loglevel=1 reboot=k panic=1 rdinit=/init ztee.scratch_mib=128 ztee.transport=vsock",
                "initrd_path": "/initrd.img",
            }),
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({
                "drive_id": "rootfs",
                "path_on_host": "/rootfs.img",
                "is_root_device": false,
                "is_read_only": true,
                "rate_limiter": {
                    "bandwidth": {"size": 104857600, "refill_time": 1000},
                    "ops": {"size": 5000, "refill_time": 1000},
                },
            }),
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 3, "uds_path": "/run/agent.vsock"}),
        ),
        (
            "PUT",
            "/entropy",
            json!({"rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 1000}}}),
        ),
        ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
    ];
    let expected: Vec<(String, String, Value)> = expected
        .into_iter()
        .map(|(m, p, b)| (m.to_string(), p.to_string(), b))
        .collect();
    assert_eq!(got, expected);
    assert!(
        calls.iter().all(|c| c.status == 204),
        "{:?}",
        api.call_lines()
    );
}

#[tokio::test]
async fn unlimited_rates_send_no_rate_limiter() {
    let dir = tempfile::tempdir().unwrap();
    let api = stand_in(dir.path());
    let vm = Controller::new(
        ApiClient::new(&api.socket),
        FirecrackerConfig {
            disk_bytes_per_sec: 0,
            disk_ops_per_sec: 0,
            entropy_bytes_per_sec: 0,
            ..FirecrackerConfig::default()
        },
    );
    vm.configure(&boot()).await.unwrap();
    let calls = api.calls();
    assert!(
        calls[2].body.get("rate_limiter").is_none(),
        "{:?}",
        calls[2]
    );
    assert_eq!(calls[4].body, json!({}));
}

#[tokio::test]
async fn pause_snapshot_resume_and_shutdown_after_boot() {
    let dir = tempfile::tempdir().unwrap();
    let api = stand_in(dir.path());
    let vm = controller(&api);
    vm.configure(&boot()).await.unwrap();
    vm.start().await.unwrap();
    let files = SnapshotFiles {
        state: "/run/state".into(),
        memory: "/run/memory".into(),
    };
    // A running VM cannot be snapshotted: the backend must pause first.
    let err = vm.snapshot(&files).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Refused { status: 400, fault_message, .. } if fault_message.contains("not paused")),
        "{err}"
    );
    vm.pause().await.unwrap();
    vm.snapshot(&files).await.unwrap();
    assert!(api.root.join("run/state").is_file());
    assert!(api.root.join("run/memory").is_file());
    vm.resume().await.unwrap();
    vm.send_ctrl_alt_del().await.unwrap();
    let tail: Vec<String> = api.call_lines().into_iter().skip(6).collect();
    assert_eq!(
        tail,
        [
            "PUT /snapshot/create 400",
            "PATCH /vm 204",
            "PUT /snapshot/create 204",
            "PATCH /vm 204",
            "PUT /actions 204"
        ]
    );
    let calls = api.calls();
    assert_eq!(calls[7].body, json!({"state": "Paused"}));
    assert_eq!(
        calls[8].body,
        json!({"snapshot_type": "Full", "snapshot_path": "/run/state", "mem_file_path": "/run/memory"})
    );
    assert_eq!(calls[9].body, json!({"state": "Resumed"}));
    assert_eq!(calls[10].body, json!({"action_type": "SendCtrlAltDel"}));
}

#[tokio::test]
async fn snapshot_load_goes_to_a_fresh_process_only() {
    let dir = tempfile::tempdir().unwrap();
    let api = stand_in(dir.path());
    std::fs::write(api.root.join("state"), b"s").unwrap();
    std::fs::write(api.root.join("memory"), b"m").unwrap();
    let files = SnapshotFiles {
        state: "/state".into(),
        memory: "/memory".into(),
    };
    let vm = controller(&api);
    vm.load(&files).await.unwrap();
    assert_eq!(
        api.calls()[0].body,
        json!({
            "snapshot_path": "/state",
            "mem_backend": {"backend_type": "File", "backend_path": "/memory"},
            "enable_diff_snapshots": false,
            "resume_vm": true,
        })
    );
    // Loaded with resume_vm: the VM runs, so pre-boot configuration is refused now...
    let err = vm.configure(&boot()).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Refused { method: "PUT", endpoint, status: 400, fault_message } if endpoint == "/machine-config" && fault_message == POST_BOOT),
        "{err}"
    );
    // ...and pausing it works.
    vm.pause().await.unwrap();

    // A process that was configured cannot load a snapshot.
    let dir2 = tempfile::tempdir().unwrap();
    let api2 = stand_in(dir2.path());
    std::fs::write(api2.root.join("state"), b"s").unwrap();
    std::fs::write(api2.root.join("memory"), b"m").unwrap();
    let vm2 = controller(&api2);
    vm2.configure(&boot()).await.unwrap();
    let err = vm2.load(&files).await.unwrap_err();
    assert!(
        err.to_string().contains("not allowed after configuring"),
        "{err}"
    );

    // Missing snapshot files are Firecracker's error, surfaced with its message.
    let dir3 = tempfile::tempdir().unwrap();
    let api3 = stand_in(dir3.path());
    let err = controller(&api3).load(&files).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("Cannot open the snapshot file /state"),
        "{err}"
    );
}

#[tokio::test]
async fn calls_in_the_wrong_phase_are_refused_with_firecrackers_messages() {
    let dir = tempfile::tempdir().unwrap();
    let api = stand_in(dir.path());
    let vm = controller(&api);
    // Before InstanceStart: no pause, no Ctrl-Alt-Del, no snapshot.
    for err in [
        vm.pause().await.unwrap_err(),
        vm.send_ctrl_alt_del().await.unwrap_err(),
        vm.snapshot(&SnapshotFiles {
            state: "/s".into(),
            memory: "/m".into(),
        })
        .await
        .unwrap_err(),
    ] {
        match err {
            ApiError::Refused {
                status,
                fault_message,
                ..
            } => {
                assert_eq!(status, 400);
                assert_eq!(fault_message, PRE_BOOT);
            }
            other => panic!("{other}"),
        }
    }
    // InstanceStart without a boot source.
    let err = vm.start().await.unwrap_err();
    assert!(
        err.to_string().contains("without kernel configuration"),
        "{err}"
    );
    vm.configure(&boot()).await.unwrap();
    vm.start().await.unwrap();
    // After InstanceStart: every configuration call and a second start are refused.
    assert!(vm
        .start()
        .await
        .unwrap_err()
        .to_string()
        .contains(POST_BOOT));
    let err = vm.configure(&boot()).await.unwrap_err();
    assert!(err.to_string().contains(POST_BOOT), "{err}");
}

/// Raw requests that Firecracker's schema refuses: the stand-in must refuse them too, or the
/// tests above would prove nothing.
#[tokio::test]
async fn the_stand_in_refuses_what_firecracker_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let api = stand_in(dir.path());
    let client = ApiClient::new(&api.socket);
    let cases: &[(&'static str, &str, Value, &str)] = &[
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 0, "mem_size_mib": 128}),
            "vCPU number is invalid",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 33, "mem_size_mib": 128}),
            "vCPU number is invalid",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 3, "mem_size_mib": 128, "smt": true}),
            "vCPU number is invalid",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": "2", "mem_size_mib": 128}),
            "invalid type for `vcpu_count`",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1}),
            "missing field `mem_size_mib`",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128, "memory": 1}),
            "unknown field `memory`",
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "Fast"}),
            "unknown variant `Fast`",
        ),
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": "/missing"}),
            "Cannot open kernel image /missing",
        ),
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": "/vmlinux", "cmdline": "x"}),
            "unknown field `cmdline`",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "other", "path_on_host": "/rootfs.img", "is_root_device": false}),
            "does not match",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/rootfs.img"}),
            "missing field `is_root_device`",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/rootfs.img", "is_root_device": false, "is_read_only": "yes"}),
            "invalid type for `is_read_only`",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/rootfs.img", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 1}}}),
            "missing field `refill_time`",
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 2, "uds_path": "/v.sock"}),
            "at least 3",
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 3}),
            "missing field `uds_path`",
        ),
        (
            "PUT",
            "/entropy",
            json!({"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "burst": 1}}}),
            "unknown field `burst`",
        ),
        (
            "PUT",
            "/actions",
            json!({"action_type": "Reboot"}),
            "unknown variant `Reboot`",
        ),
        (
            "PATCH",
            "/vm",
            json!({"state": "Stopped"}),
            "unknown variant `Stopped`",
        ),
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": "/s"}),
            "exactly one of",
        ),
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}),
            "exactly one of",
        ),
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}),
            "unknown variant `Disk`",
        ),
        (
            "PUT",
            "/machine",
            json!({}),
            "Invalid request method and/or path",
        ),
        (
            "GET",
            "/vsock",
            json!({}),
            "Invalid request method and/or path",
        ),
    ];
    for (method, endpoint, body, expected) in cases {
        let response = client
            .request(method, endpoint, &serde_json::to_vec(body).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status, 400, "{method} {endpoint} {body}");
        let message = firecracker::api::fault_message(&response.body);
        assert!(
            message.contains(expected),
            "{method} {endpoint} {body}: {message}"
        );
    }
    let empty = client.request("PUT", "/vsock", b"").await.unwrap();
    assert_eq!(empty.status, 400);
    assert!(firecracker::api::fault_message(&empty.body).contains("Empty PUT request"));
    // Every one was recorded, refused, and changed nothing: a real boot sequence still works.
    assert_eq!(api.calls().len(), cases.len() + 1);
    assert!(api.calls().iter().all(|c| c.status == 400));
    let vm = controller(&api);
    vm.configure(&boot()).await.unwrap();
    vm.start().await.unwrap();
}

#[tokio::test]
async fn api_errors_that_are_not_firecrackers_are_typed_too() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens.
    let err = ApiClient::new(dir.path().join("none.sock"))
        .put("/vsock", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Io { .. }), "{err}");
    // A peer that answers something other than HTTP.
    let socket = dir.path().join("junk.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        }
    });
    let err = ApiClient::new(&socket)
        .put("/vsock", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Malformed { .. }), "{err}");
    // No API socket within the deadline.
    let err = ApiClient::new(dir.path().join("late.sock"))
        .wait_ready(Instant::now() + Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::NotReady(_)), "{err}");
}

/// A Unix-socket peer playing Firecracker's vsock socket: reads the `CONNECT` line, answers
/// with `answer` (or closes when `None`), then echoes.
fn vsock_peer(
    path: &Path,
    answers: Vec<Option<&'static [u8]>>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut requests = Vec::new();
        for answer in answers {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            requests.push(String::from_utf8(line).unwrap());
            match answer {
                None => drop(stream),
                Some(answer) => {
                    stream.write_all(answer).await.unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        requests
    })
}

#[tokio::test]
async fn vsock_handshake_connects_to_the_agent_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    // The agent's answer may follow OK in the same write: it must not be eaten.
    let peer = vsock_peer(&path, vec![Some(b"OK 1073741824\nhello")]);
    let (mut stream, host_port) =
        vsock::connect_once(&path, ztee_wire::VSOCK_PORT, Duration::from_secs(20))
            .await
            .unwrap();
    assert_eq!(host_port, 1_073_741_824);
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    drop(stream);
    assert_eq!(peer.await.unwrap(), ["CONNECT 1024"]);
}

#[tokio::test]
async fn vsock_handshake_rejects_garbage_and_closed_peers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let peer = vsock_peer(
        &path,
        vec![
            Some(b"NOPE\n"),
            None,
            Some(b"OK notaport\n"),
            Some(b"OK 11111111111111111111111111111111111111\n"),
        ],
    );
    let err = vsock::connect_once(&path, 1024, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HandshakeError::BadAnswer { answer, .. } if answer == "NOPE"),
        "{err}"
    );
    let err = vsock::connect_once(&path, 1024, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HandshakeError::Closed { port: 1024, .. }),
        "{err}"
    );
    let err = vsock::connect_once(&path, 1024, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(err, HandshakeError::BadAnswer { .. }), "{err}");
    let err = vsock::connect_once(&path, 1024, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(err, HandshakeError::BadAnswer { .. }), "{err}");
    assert_eq!(peer.await.unwrap().len(), 4);
}

#[tokio::test]
async fn vsock_connect_retries_until_the_agent_listens_or_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    // Twice "nothing listens on that port" (Firecracker closes), then the agent answers.
    let peer = vsock_peer(&path, vec![None, None, Some(b"OK 1073741825\n")]);
    let stream = vsock::connect(&path, 1024, Instant::now() + Duration::from_secs(20))
        .await
        .unwrap();
    drop(stream);
    assert_eq!(peer.await.unwrap(), ["CONNECT 1024"; 3]);

    let never = dir.path().join("never.sock");
    let _peer = vsock_peer(&never, vec![None; 1000]);
    let err = vsock::connect(&never, 1024, Instant::now() + Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, HandshakeError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("closed the connection"), "{err}");
}

/// A VMM that takes `CONNECT` and never answers for the first `silent` connections (as
/// vhost-device-vsock does once its worker has stopped, and Firecracker can before the guest's
/// driver is up), then answers like Firecracker.
fn silent_vsock_peer(path: &Path, silent: usize) -> tokio::task::JoinHandle<usize> {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut served = 0;
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            served += 1;
            if served <= silent {
                held.push(stream);
                continue;
            }
            stream.write_all(b"OK 1073741826\n").await.unwrap();
            return served;
        }
    })
}

#[tokio::test]
async fn vsock_connect_gives_up_on_an_attempt_that_is_never_answered() {
    let dir = tempfile::tempdir().unwrap();
    // Two attempts are taken and never answered; the third is answered within the deadline.
    let path = dir.path().join("v.sock");
    let peer = silent_vsock_peer(&path, 2);
    let connected = tokio::time::timeout(
        Duration::from_secs(30),
        vsock::connect(&path, 1024, Instant::now() + Duration::from_secs(20)),
    )
    .await
    .expect("an unanswered CONNECT must not hold connect past its deadline");
    connected.unwrap();
    assert_eq!(peer.await.unwrap(), 3);

    // Never answered: the deadline holds and the error says why.
    let never = dir.path().join("never.sock");
    let _peer = silent_vsock_peer(&never, usize::MAX);
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        vsock::connect(&never, 1024, Instant::now() + Duration::from_millis(700)),
    )
    .await
    .expect("an unanswered CONNECT must not hold connect past its deadline")
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, HandshakeError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
}

/// Shutdown asks with Ctrl-Alt-Del, then kills a VMM that does not exit. The "VMM" is an
/// ordinary process that ignores the request (`sleep`), which is all this needs.
#[tokio::test]
async fn shutdown_kills_a_vmm_that_ignores_ctrl_alt_del() {
    let dir = tempfile::tempdir().unwrap();
    let api = stand_in(dir.path());
    let vm = controller(&api);
    vm.configure(&boot()).await.unwrap();
    vm.start().await.unwrap();
    let mut vmm = tokio::process::Command::new("sleep")
        .arg("600")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    firecracker::shutdown(&vm, &mut vmm).await;
    assert!(
        vmm.try_wait().unwrap().is_some(),
        "the VMM is still running"
    );
    assert!(started.elapsed() >= firecracker::SHUTDOWN_GRACE);
    assert_eq!(
        api.calls().last().unwrap().body,
        json!({"action_type": "SendCtrlAltDel"})
    );
}
