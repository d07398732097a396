//! Real servers on loopback for egress tests (cargo feature `testing`): a DNS server whose answers
//! a test scripts (to stage rebinding), and HTTP and HTTPS origin servers that record what reached
//! them. Not for production use.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures: a failure is a failed test

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// A DNS server on `127.0.0.1` answering A queries from a script: each query for a name takes the
/// next answer in its list (the last one repeats). Other names get NXDOMAIN; other types, no data.
pub struct TestDns {
    pub addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
}

impl TestDns {
    pub async fn start(script: Vec<(&str, Vec<Vec<Ipv4Addr>>)>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut answers: HashMap<String, VecDeque<Vec<Ipv4Addr>>> = HashMap::new();
        for (name, list) in script {
            answers.insert(name.to_string(), list.into_iter().collect());
        }
        let queries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Some((id, name, qtype, question)) = parse_query(&buf[..n]) else {
                    continue;
                };
                let ips = if qtype == 1 {
                    *counted.lock().unwrap().entry(name.clone()).or_default() += 1;
                    answers.get_mut(&name).map(|list| {
                        if list.len() > 1 {
                            list.pop_front().unwrap()
                        } else {
                            list.front().cloned().unwrap_or_default()
                        }
                    })
                } else {
                    answers.get(&name).map(|_| Vec::new())
                };
                let reply = build_reply(id, question, ips);
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        Self { addr, queries }
    }

    /// How many A queries arrived for `name`.
    pub fn queries(&self, name: &str) -> usize {
        self.queries.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

fn parse_query(packet: &[u8]) -> Option<(u16, String, u16, &[u8])> {
    if packet.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*packet.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(packet.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(i)?, *packet.get(i + 1)?]);
    let question = packet.get(12..i + 4)?;
    Some((id, labels.join("."), qtype, question))
}

fn build_reply(id: u16, question: &[u8], ips: Option<Vec<Ipv4Addr>>) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    let rcode = if ips.is_some() { 0 } else { 3 };
    out.extend_from_slice(&[0x81, 0x80 | rcode]);
    let answers = ips.unwrap_or_default();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// One request an origin server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

/// An HTTP/1.1 origin (plain or TLS) answering every request with `200` and a fixed body.
pub struct Origin {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<Mutex<usize>>,
}

impl Origin {
    /// Plain HTTP on `ip:port` (port 0: any).
    pub async fn http(ip: IpAddr, port: u16, body: &'static str) -> Self {
        Self::start(ip, port, body, None).await
    }

    /// HTTPS with a certificate for `name` issued by a fresh test CA; returns the CA (PEM) too.
    pub async fn https(ip: IpAddr, name: &str, body: &'static str) -> (Self, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ztee egress test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (
            Self::start(ip, 0, body, Some(acceptor)).await,
            ca_cert.pem(),
        )
    }

    async fn start(
        ip: IpAddr,
        port: u16,
        body: &'static str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let connections: Arc<Mutex<usize>> = Arc::default();
        let (log, count) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                *count.lock().unwrap() += 1;
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                answer(stream, body, log).await;
                            }
                        }
                        None => answer(socket, body, log).await,
                    }
                });
            }
        });
        Self {
            addr,
            received,
            connections,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// TCP connections accepted (also those that never sent a request).
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    body: &'static str,
    log: Arc<Mutex<Vec<Received>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body_in = buf[head_end..].to_vec();
    while body_in.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body_in.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().unwrap().push(Received {
        head,
        body: body_in,
    });
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
