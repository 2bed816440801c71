//! Request bodies with bounded memory: size and chunk limits while reading, gzip/deflate
//! decompression capped at the same size, and response compression.

use std::io::{Read, Write};

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::HttpLimits;

/// Content codings Switchyard reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    /// zlib stream, as HTTP's `deflate` (and Triton) defines it.
    Deflate,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// Why a body was refused (all 400).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {limit} bytes (--http-max-input-size)")]
    TooLarge { limit: usize },
    #[error("request body has more than {0} chunks")]
    TooManyChunks(usize),
    #[error("unsupported Content-Encoding '{0}': use gzip, deflate or identity")]
    UnsupportedEncoding(String),
    #[error("cannot read the request body: {0}")]
    Read(String),
    #[error("cannot decompress the request body: {0}")]
    Decompress(String),
}

fn request_encoding(headers: &HeaderMap) -> Result<Option<Encoding>, BodyError> {
    let Some(v) = headers.get("content-encoding") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| BodyError::UnsupportedEncoding("<not ASCII>".into()))?
        .trim()
        .to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Ok(None),
        "gzip" => Ok(Some(Encoding::Gzip)),
        "deflate" => Ok(Some(Encoding::Deflate)),
        other => Err(BodyError::UnsupportedEncoding(
            other.chars().take(64).collect(),
        )),
    }
}

/// Reads the whole body within `limits`, decompressing it if `Content-Encoding` says so.
pub async fn read_body(
    body: &mut Body,
    headers: &HeaderMap,
    limits: &HttpLimits,
) -> Result<Bytes, BodyError> {
    let encoding = request_encoding(headers)?;
    let max = limits.max_input_bytes;
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge { limit: max });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let mut chunks = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        chunks += 1;
        if chunks > limits.max_chunks {
            return Err(BodyError::TooManyChunks(limits.max_chunks));
        }
        if buf.len() + data.len() > max {
            return Err(BodyError::TooLarge { limit: max });
        }
        buf.extend_from_slice(&data);
    }
    let raw = buf.freeze();
    match encoding {
        None => Ok(raw),
        Some(enc) => decompress(&raw, enc, max),
    }
}

/// Most bytes [`drain`] discards before giving up on a connection.
const DRAIN_MAX_BYTES: usize = 1 << 27;
/// Longest [`drain`] waits for the rest of a body.
const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and discards what is left of a body, within [`DRAIN_MAX_BYTES`] and
/// [`DRAIN_MAX_TIME`]. True if the body ended, so the connection can be reused.
pub async fn drain(body: &mut Body) -> bool {
    let discard = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DRAIN_MAX_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_MAX_TIME, discard)
        .await
        .unwrap_or(false)
}

/// Inflates `data`, refusing output over `max` bytes (gzip bombs stop at the limit).
pub fn decompress(data: &[u8], enc: Encoding, max: usize) -> Result<Bytes, BodyError> {
    let reader: Box<dyn Read + '_> = match enc {
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(data)),
    };
    let mut out = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Decompress(e.to_string()))?;
    if out.len() > max {
        return Err(BodyError::TooLarge { limit: max });
    }
    Ok(Bytes::from(out))
}

/// Compresses a response body.
pub fn compress(data: &[u8], enc: Encoding) -> std::io::Result<Vec<u8>> {
    let level = flate2::Compression::fast();
    match enc {
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), level);
            w.write_all(data)?;
            w.finish()
        }
        Encoding::Deflate => {
            let mut w = flate2::write::ZlibEncoder::new(Vec::new(), level);
            w.write_all(data)?;
            w.finish()
        }
    }
}

/// The response coding `Accept-Encoding` asks for: the higher `q` of gzip and deflate (gzip
/// on a tie); `q=0` excludes a coding.
pub fn accepted_encoding(accept: Option<&str>) -> Option<Encoding> {
    let mut best: Option<(f32, Encoding)> = None;
    for item in accept?.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").map(|q| q.trim().parse::<f32>()))
            .unwrap_or(Ok(1.0))
            .unwrap_or(0.0);
        let enc = match coding.as_str() {
            "gzip" => Encoding::Gzip,
            "deflate" => Encoding::Deflate,
            _ => continue,
        };
        if q > 0.0
            && best.is_none_or(|(bq, be)| q > bq || (q == bq && enc == Encoding::Gzip && be != enc))
        {
            best = Some((q, enc));
        }
    }
    best.map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bomb_limit() {
        let data = vec![7u8; 10_000];
        for enc in [Encoding::Gzip, Encoding::Deflate] {
            let c = compress(&data, enc).unwrap();
            assert_eq!(&decompress(&c, enc, 10_000).unwrap()[..], &data[..]);
            assert!(matches!(
                decompress(&c, enc, 9_999),
                Err(BodyError::TooLarge { .. })
            ));
        }
        assert!(matches!(
            decompress(b"not gzip", Encoding::Gzip, 100),
            Err(BodyError::Decompress(_))
        ));
    }

    #[test]
    fn accept_encoding_choice() {
        assert_eq!(accepted_encoding(None), None);
        assert_eq!(accepted_encoding(Some("gzip")), Some(Encoding::Gzip));
        assert_eq!(
            accepted_encoding(Some("deflate, gzip;q=0")),
            Some(Encoding::Deflate)
        );
        assert_eq!(accepted_encoding(Some("br, identity")), None);
        assert_eq!(
            accepted_encoding(Some("gzip;q=0.2, deflate;q=0.9")),
            Some(Encoding::Deflate)
        );
        assert_eq!(
            accepted_encoding(Some("deflate, gzip")),
            Some(Encoding::Gzip)
        );
    }

    #[tokio::test]
    async fn limits_while_reading() {
        let limits = HttpLimits {
            max_input_bytes: 10,
            max_chunks: 3,
            max_json_depth: 100,
        };
        let h = HeaderMap::new();
        let ok = read_body(&mut Body::from("0123456789"), &h, &limits)
            .await
            .unwrap();
        assert_eq!(ok.len(), 10);
        assert!(matches!(
            read_body(&mut Body::from("0123456789x"), &h, &limits).await,
            Err(BodyError::TooLarge { .. })
        ));
        let mut chunks = futures_chunks(5);
        assert!(matches!(
            read_body(&mut chunks, &h, &limits).await,
            Err(BodyError::TooManyChunks(3))
        ));
        let mut gz = HeaderMap::new();
        gz.insert("content-encoding", "br".parse().unwrap());
        assert!(matches!(
            read_body(&mut Body::from("x"), &gz, &limits).await,
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }

    fn futures_chunks(n: usize) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            (0..n).map(|_| Ok(Bytes::from_static(b"a"))).collect();
        Body::from_stream(tokio_stream::iter(frames))
    }
}
