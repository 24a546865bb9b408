//! Delegate tokens: issued at provisioning, accepted by the data store while
//! the delegate lives, revoked at teardown.

use super::Token;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// The tokens this engine issued and that are still live.
pub struct TokenRegistry {
    rng: Mutex<ChaCha20Rng>,
    live: Mutex<BTreeSet<Token>>,
}

impl TokenRegistry {
    /// Tokens from the operating system's randomness (a real engine).
    pub fn from_entropy() -> Self {
        Self::with_rng(ChaCha20Rng::from_rng(&mut rand::rng()))
    }

    /// Tokens from a seed: a simulated run stays a function of its seed.
    pub fn seeded(seed: u64) -> Self {
        Self::with_rng(ChaCha20Rng::seed_from_u64(seed ^ 0x746f_6b65_6e73))
    }

    fn with_rng(rng: ChaCha20Rng) -> Self {
        Self {
            rng: Mutex::new(rng),
            live: Mutex::new(BTreeSet::new()),
        }
    }

    /// A random id from the same source, not a token (never accepted):
    /// for names that must never repeat.
    pub fn unique_id(&self) -> String {
        use rand::Rng;
        let mut bytes = [0u8; 16];
        self.rng.lock().expect("token rng").fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A new live token.
    pub fn issue(&self) -> Token {
        use rand::Rng;
        let mut bytes = [0u8; Token::BYTES];
        self.rng.lock().expect("token rng").fill_bytes(&mut bytes);
        let token = Token::from_bytes(bytes);
        self.live.lock().expect("tokens").insert(token.clone());
        token
    }

    /// Stops accepting `token`.
    pub fn revoke(&self, token: &Token) {
        self.live.lock().expect("tokens").remove(token);
    }

    /// True when an `Authorization` header carries a live token. Compares
    /// against every live token in constant time each.
    pub fn accepts(&self, header: &str) -> bool {
        self.live
            .lock()
            .expect("tokens")
            .iter()
            .fold(false, |ok, t| t.matches_bearer(header) | ok)
    }

    /// How many tokens are live.
    pub fn live(&self) -> usize {
        self.live.lock().expect("tokens").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_are_accepted_until_revoked() {
        let tokens = TokenRegistry::seeded(1);
        let (a, b) = (tokens.issue(), tokens.issue());
        assert_ne!(a, b);
        assert!(tokens.accepts(&a.bearer()) && tokens.accepts(&b.bearer()));
        tokens.revoke(&a);
        assert!(!tokens.accepts(&a.bearer()));
        assert!(tokens.accepts(&b.bearer()));
        assert!(!tokens.accepts("Bearer nothing"));
        assert_eq!(TokenRegistry::seeded(1).issue(), a, "seeded tokens replay");
    }
}
