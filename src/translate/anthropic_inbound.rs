//! stub
/// stub
pub fn error_body(etype: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"type":"error","error":{"type":etype,"message":message}}),
    )
    .unwrap_or_default()
}
