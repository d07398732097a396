//! Server-sent events (the WHATWG `text/event-stream` format both providers stream in): split
//! an upstream byte stream into events and write events back out.

/// One event. Only the fields the providers use: `event` and `data` (`id` and `retry` lines are
/// dropped; neither provider sends them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            event: None,
            data: data.into(),
        }
    }

    pub fn named(event: impl Into<String>, data: impl Into<String>) -> Self {
        Self {
            event: Some(event.into()),
            data: data.into(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(event) = &self.event {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(event.as_bytes());
            out.push(b'\n');
        }
        for line in self.data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
    }
}

/// Longest single event accepted from an upstream; a stream that exceeds it is cut off rather
/// than buffered without bound.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("an upstream stream event exceeded {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

/// Incremental parser: feed bytes as they arrive, take complete events out.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            self.line(&line, &mut events);
        }
        if self.buf.len() + self.data.iter().map(String::len).sum::<usize>() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }

    /// The event left open when the stream ended without its blank line, if any.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            let mut events = Vec::new();
            self.line(&line, &mut events);
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            events.extend(self.dispatch());
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        Some(SseEvent { event, data })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_reassembled() {
        let wire = b"event: a\ndata: {\"x\":1}\n\n: comment\r\ndata: [DONE]\r\n\r\n";
        for cut in 0..wire.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&wire[..cut]).unwrap();
            got.extend(p.push(&wire[cut..]).unwrap());
            got.extend(p.finish());
            assert_eq!(
                got,
                vec![SseEvent::named("a", "{\"x\":1}"), SseEvent::data("[DONE]")],
                "cut at {cut}"
            );
        }
        let mut out = Vec::new();
        SseEvent::named("a", "1\n2").encode(&mut out);
        assert_eq!(out, b"event: a\ndata: 1\ndata: 2\n\n");
    }
}
