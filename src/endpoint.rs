//! The rules for the network endpoints a pipeline file names (OpenSearch, the Schema
//! Registry): secrets never in URLs, and plaintext only to this machine unless allowed.

use url::Url;

/// Whether a URL's host is another machine than this one (not `localhost`, not loopback).
pub fn beyond_this_machine(url: &Url) -> bool {
    !url.host_str().is_none_or(|host| {
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// Whether a URL holds a user name or password (which errors and logs would then repeat).
pub fn carries_credentials(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_localhost_are_this_machine_and_nothing_else_is() {
        let beyond = |u: &str| beyond_this_machine(&Url::parse(u).unwrap());
        assert!(beyond("https://search.example.com:9200"));
        assert!(beyond("http://10.0.0.7:9200"));
        assert!(!beyond("http://127.0.0.1:9200"));
        assert!(!beyond("http://localhost:9200"));
        assert!(!beyond("http://[::1]:9200"));
    }

    #[test]
    fn a_user_or_a_password_in_a_url_is_found() {
        let carries = |u: &str| carries_credentials(&Url::parse(u).unwrap());
        assert!(carries("https://me:secret@registry.example.com"));
        assert!(carries("https://me@registry.example.com"));
        assert!(!carries("https://registry.example.com"));
    }
}
