//! Tracepoint `format` files: where tracefs is, and the byte offset of each field.
//!
//! Offsets change between kernels, so they are read here at start-up and never compiled in.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}; mount it with `mount -t tracefs tracefs /sys/kernel/tracing`")]
    Mount(std::io::Error),
    #[error("tracepoint {0} does not exist on this kernel ({1})")]
    Missing(String, std::io::Error),
    #[error("tracepoint {tracepoint} has no field `{field}` in its format file")]
    NoField { tracepoint: String, field: String },
    #[error("malformed format file for {tracepoint}: {line}")]
    Malformed { tracepoint: String, line: String },
}

/// Fields of one tracepoint: name -> (offset, size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub fields: HashMap<String, (u32, u32)>,
}

impl Format {
    /// Parses the text of a `format` file.
    pub fn parse(name: &str, text: &str) -> Result<Self, TracefsError> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let malformed = || TracefsError::Malformed { tracepoint: name.to_string(), line: line.to_string() };
            // "field:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;"
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().ok_or_else(malformed)?;
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse::<u32>().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse::<u32>().ok();
                }
            }
            let (Some(offset), Some(size)) = (offset, size) else {
                return Err(malformed());
            };
            // The field name is the last word of the declaration, without any array suffix.
            let last = decl.rsplit([' ', '*']).next().ok_or_else(malformed)?;
            let field = last.split('[').next().unwrap_or(last);
            if field.is_empty() {
                return Err(malformed());
            }
            fields.insert(field.to_string(), (offset, size));
        }
        Ok(Self { name: name.to_string(), fields })
    }

    /// Offset of `field`, checking that it has the size the program reads.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, TracefsError> {
        match self.fields.get(field) {
            Some(&(off, sz)) if sz == size => Ok(off),
            _ => Err(TracefsError::NoField { tracepoint: self.name.clone(), field: format!("{field} (size {size})") }),
        }
    }
}

/// Mounted tracefs, found or mounted on demand (a fresh VM or container may have none).
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if Path::new(root).join("events").is_dir() {
                return Ok(Self { root: root.into() });
            }
        }
        let root = PathBuf::from("/sys/kernel/tracing");
        nix::mount::mount(Some("tracefs"), &root, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>).map_err(|e| TracefsError::Mount(e.into()))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let full = format!("{category}:{name}");
        let path = self.root.join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path).map_err(|e| TracefsError::Missing(full.clone(), e))?;
        Format::parse(&full, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_LENGTH: &str = "name: sock_send_length
ID: 2284
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:const void * skaddr;\toffset:64;\tsize:8;\tsigned:0;

print fmt: \"sk address = %p\", REC->sk
";

    #[test]
    fn parses_fields_pointers_and_arrays() {
        let f = Format::parse("sock:sock_send_length", SEND_LENGTH).unwrap();
        assert_eq!(f.offset("sk", 8).unwrap(), 8);
        assert_eq!(f.offset("family", 2).unwrap(), 16);
        assert_eq!(f.offset("protocol", 2).unwrap(), 18);
        assert_eq!(f.offset("ret", 4).unwrap(), 20);
        assert_eq!(f.offset("saddr_v6", 16).unwrap(), 42);
        assert_eq!(f.offset("skaddr", 8).unwrap(), 64);
        assert_eq!(f.offset("common_pid", 4).unwrap(), 4);
    }

    #[test]
    fn wrong_size_or_missing_field_is_an_error_naming_it() {
        let f = Format::parse("sock:sock_send_length", SEND_LENGTH).unwrap();
        let e = f.offset("ret", 8).unwrap_err().to_string();
        assert!(e.contains("ret") && e.contains("sock:sock_send_length"), "{e}");
        assert!(f.offset("nope", 4).is_err());
    }

    #[test]
    fn malformed_line_is_reported() {
        let e = Format::parse("x:y", "\tfield:int a;\toffset:zz;\tsize:4;\n").unwrap_err();
        assert!(matches!(e, TracefsError::Malformed { .. }), "{e}");
    }
}
