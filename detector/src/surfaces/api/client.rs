//! The CLI side of the API.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use thiserror::Error;

use super::{Request, Response};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("the agent is not running (cannot connect to {path}: {err}); start it with `sudo detector run`, or pass the --api-socket it uses")]
    NotRunning { path: String, err: std::io::Error },
    #[error("talking to the agent at {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("the agent's answer is not valid: {0}")]
    Decode(String),
    #[error("the agent refused the request: {0}")]
    Refused(String),
}

pub fn call(path: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let p = path.display().to_string();
    let mut s = UnixStream::connect(path).map_err(|err| ClientError::NotRunning { path: p.clone(), err })?;
    let io = |err| ClientError::Io { path: p.clone(), err };
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    let resp: Response = serde_json::from_str(&answer).map_err(|e| ClientError::Decode(e.to_string()))?;
    if !resp.ok {
        return Err(ClientError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp.data)
}
