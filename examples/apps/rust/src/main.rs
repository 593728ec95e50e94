use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    for mut stream in listener.incoming().flatten() {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        let body = "hello from rust\n";
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}
