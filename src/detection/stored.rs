//! How a key's detection state is stored: under its rule and key values, the rule's hash
//! and the state in the compact window codec (evidence lines as references).

use super::kinds::KeyState;
use super::{Evidence, Key, SavedWindow, WindowId};
use crate::store::codec::{CodecError, Dec, Enc, Loc, placeholder};

/// Store key of a window: rule, NUL, then the key values as JSON (the rule hash is in the
/// value).
pub fn window_key(id: &WindowId) -> Vec<u8> {
    let mut k = id.rule.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(
        serde_json::to_string(&id.key)
            .unwrap_or_default()
            .as_bytes(),
    );
    k
}

/// A window's stored value; every evidence line it references goes to `sink`.
pub fn encode_window(
    id: &WindowId,
    state: &KeyState,
    sink: &mut dyn FnMut(&Evidence) -> Loc,
) -> Vec<u8> {
    let mut w = Enc::new(sink);
    w.str(&id.rule_hash);
    state.encode(&mut w);
    w.finish()
}

/// A window read back from its key and value, its lines looked up with `resolve`.
pub fn decode_window(
    key: &[u8],
    value: &[u8],
    resolve: &mut dyn FnMut(Loc) -> Result<Evidence, CodecError>,
) -> Result<SavedWindow, CodecError> {
    let split = key
        .iter()
        .position(|b| *b == 0)
        .ok_or(CodecError::Malformed("window key without a rule"))?;
    let rule = std::str::from_utf8(&key[..split])
        .map_err(|_| CodecError::Malformed("window rule"))?
        .to_string();
    let key: Key = serde_json::from_slice(&key[split + 1..])
        .map_err(|_| CodecError::Malformed("window key values"))?;
    let mut r = Dec::new(value, resolve);
    let rule_hash = r.str()?.to_string();
    let state = KeyState::decode(&mut r)?;
    Ok((
        WindowId {
            rule,
            rule_hash,
            key,
        },
        state,
    ))
}

/// The evidence lines a stored window references (read without looking them up).
pub fn window_refs(key: &[u8], value: &[u8]) -> Result<Vec<Loc>, CodecError> {
    let mut refs = Vec::new();
    decode_window(key, value, &mut |r| {
        refs.push(r);
        Ok(placeholder(r))
    })?;
    Ok(refs)
}
