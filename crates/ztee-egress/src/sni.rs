//! Reading the server name (SNI) from a TLS ClientHello, so the proxy can check that a CONNECT
//! tunnel to an allowed host is not used to talk to another one behind the same address.
//!
//! Only what is needed is parsed: the TLS record header, the handshake header and the extension
//! list. The ClientHello must arrive in one record (every common client does this; a 16 KiB
//! record holds any ClientHello without oversized extensions).

/// TLS record header: type, version, length.
pub const RECORD_HEADER: usize = 5;
/// Largest TLS plaintext record body (RFC 8446 section 5.1).
pub const MAX_RECORD: usize = 16 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("the tunnel did not start with a TLS handshake")]
    NotTls,
    #[error("the TLS ClientHello is malformed")]
    Malformed,
    #[error("the TLS ClientHello spans several records")]
    Fragmented,
}

/// Length of the first TLS record (header included) once the header is available.
pub fn record_len(header: &[u8]) -> Result<usize, SniError> {
    if header.len() < RECORD_HEADER {
        return Err(SniError::Malformed);
    }
    if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
        return Err(SniError::NotTls);
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len == 0 || len > MAX_RECORD {
        return Err(SniError::Malformed);
    }
    Ok(RECORD_HEADER + len)
}

/// The host name in the ClientHello's server_name extension, lower-cased; `None` when the client
/// sent no SNI. `record` is the whole first record, header included.
pub fn server_name(record: &[u8]) -> Result<Option<String>, SniError> {
    let total = record_len(record)?;
    let body = record
        .get(RECORD_HEADER..total)
        .ok_or(SniError::Malformed)?;
    let mut r = Reader(body);
    if r.u8()? != HANDSHAKE_CLIENT_HELLO {
        return Err(SniError::NotTls);
    }
    let hello_len = r.u24()?;
    if hello_len > r.0.len() {
        return Err(SniError::Fragmented);
    }
    let mut hello = Reader(r.take(hello_len)?);
    hello.take(2 + 32)?; // legacy_version, random
    let session_id = usize::from(hello.u8()?);
    hello.take(session_id)?;
    let suites = usize::from(hello.u16()?);
    hello.take(suites)?;
    let compression = usize::from(hello.u8()?);
    hello.take(compression)?;
    if hello.0.is_empty() {
        return Ok(None);
    }
    let extensions_len = usize::from(hello.u16()?);
    let mut extensions = Reader(hello.take(extensions_len)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = usize::from(extensions.u16()?);
        let data = extensions.take(len)?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        let mut list = Reader(data);
        let list_len = usize::from(list.u16()?);
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name_len = usize::from(names.u16()?);
            let name = names.take(name_len)?;
            if name_type == NAME_TYPE_HOST {
                let name = std::str::from_utf8(name).map_err(|_| SniError::Malformed)?;
                return Ok(Some(name.to_ascii_lowercase()));
            }
        }
        return Err(SniError::Malformed);
    }
    Ok(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SniError> {
        if n > self.0.len() {
            return Err(SniError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SniError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, SniError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Result<usize, SniError> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ClientHello with the given server names (none: no SNI extension).
    pub(crate) fn client_hello(name: Option<&str>) -> Vec<u8> {
        let mut extensions = Vec::new();
        // An unrelated extension first (supported_versions), as real clients send.
        extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = name {
            let n = name.as_bytes();
            let entry_len = 3 + n.len();
            extensions.extend_from_slice(&EXTENSION_SERVER_NAME.to_be_bytes());
            extensions.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
            extensions.extend_from_slice(&(entry_len as u16).to_be_bytes());
            extensions.push(NAME_TYPE_HOST);
            extensions.extend_from_slice(&(n.len() as u16).to_be_bytes());
            extensions.extend_from_slice(n);
        }
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[7; 32]);
        hello.push(0); // session id
        hello.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        hello.extend_from_slice(&[1, 0]); // null compression
        hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        hello.extend_from_slice(&extensions);
        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
        handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&hello);
        let mut record = vec![CONTENT_HANDSHAKE, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn reads_the_server_name() {
        assert_eq!(
            server_name(&client_hello(Some("Api.Example.com"))).unwrap(),
            Some("api.example.com".to_string())
        );
        assert_eq!(server_name(&client_hello(None)).unwrap(), None);
    }

    #[test]
    fn refuses_what_is_not_a_client_hello() {
        assert_eq!(record_len(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        let mut hello = client_hello(Some("a.example"));
        hello.truncate(hello.len() - 3);
        assert!(server_name(&hello).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = server_name(&bytes);
        }

        #[test]
        fn corrupted_hellos_never_panic(index in 0usize..80, value in any::<u8>()) {
            let mut hello = client_hello(Some("svc.example.com"));
            let i = index % hello.len();
            hello[i] = value;
            let _ = server_name(&hello);
        }
    }
}
