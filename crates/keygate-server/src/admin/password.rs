//! Admin-UI passwords: argon2id (the `argon2` crate's default parameters: 19 MiB, two
//! passes, one lane — OWASP's recommendation) in PHC string form. Hashing is slow by design,
//! so the server runs it off the async threads.

use std::sync::Mutex;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

/// Most argon2 memory one hash may ask for (64 MiB), whatever a stored PHC string says.
const MAX_BLOCKS: usize = 64 * 1024;

/// Memory buffers kept for reuse: as many as password checks may run at once.
const KEPT_BUFFERS: usize = super::MAX_PASSWORD_CHECKS;

/// argon2 memory, reused from check to check. Memory a check frees is not reliably given back
/// to the system (the C allocator keeps it in the arena of the thread that freed it), so
/// checks spread over many blocking threads would hold 19 MiB per thread; reusing a few
/// buffers keeps the total at [`KEPT_BUFFERS`] × 19 MiB.
static BUFFERS: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// A buffer of at least `blocks` blocks, taken from [`BUFFERS`] and returned (zeroed) on drop.
struct Memory(Vec<Block>);

impl Memory {
    fn take(blocks: usize) -> Self {
        let kept = BUFFERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .filter(|b| b.len() >= blocks);
        Self(kept.unwrap_or_else(|| vec![Block::new(); blocks]))
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // The blocks hold values derived from the password.
        self.0.fill(Block::new());
        let mut kept = BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_BUFFERS {
            kept.push(std::mem::take(&mut self.0));
        }
    }
}

/// argon2 of `password` with `salt` into `out`, in reused memory.
fn derive(
    argon: &Argon2<'_>,
    params: &Params,
    password: &str,
    salt: &[u8],
    out: &mut [u8],
) -> bool {
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return false;
    }
    let mut memory = Memory::take(blocks);
    argon
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory.0[..blocks])
        .is_ok()
}

/// The argon2id hash of `password`, as a PHC string.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut raw_salt = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut raw_salt).map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    if !derive(&argon, &params, password, raw_salt, &mut out) {
        return Err("could not hash the password".into());
    }
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `phc` (false for a malformed hash, or one asking for more than
/// 64 MiB). The comparison is constant-time.
pub fn matches(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let Ok(version) = parsed.version.map(Version::try_from).transpose() else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut raw_salt = [0u8; 64];
    let Ok(raw_salt) = salt.decode_b64(&mut raw_salt) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version.unwrap_or_default(), params.clone());
    let mut out = vec![0u8; expected.len()];
    derive(&argon, &params, password, raw_salt, &mut out)
        && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// A hash to check against when the user does not exist, so that a wrong username costs as
/// long as a wrong password and does not tell which names exist.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("keygate decoy password, never matched").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_checked() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(!a.contains("correct horse"));
        assert!(matches("correct horse battery", &a));
        assert!(!matches("correct horse battery!", &a));
        assert!(!matches("anything", "not a phc string"));
        // What the argon2 crate itself makes is checked the same way, and vice versa.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let theirs = Argon2::default()
            .hash_password(
                b"correct horse battery",
                &SaltString::encode_b64(&[7; 16]).unwrap(),
            )
            .unwrap()
            .to_string();
        assert!(matches("correct horse battery", &theirs));
        assert!(!matches("correct horse batterY", &theirs));
        let ours = PasswordHash::new(&a).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", &ours)
                .is_ok()
        );
        // A stored hash cannot make a check take more than 64 MiB.
        let greedy = theirs.replace("m=19456", "m=1048576");
        assert!(!matches("correct horse battery", &greedy));
        assert!(!matches("keygate decoy", decoy()));
    }
}
