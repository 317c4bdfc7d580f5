//! The crate's error type: every variant names the object and the namespace involved.

use std::io;

/// An error from a netlink or namespace operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused a request (its errno is the source).
    #[error("{action} in netns {netns}: {source}")]
    Kernel {
        /// What was asked, naming the object (`create veth a (peer b)`).
        action: String,
        /// The namespace the connection is bound to.
        netns: String,
        /// The errno the kernel answered with.
        source: io::Error,
    },
    /// The netlink exchange itself failed (closed connection, undecodable answer).
    #[error("{action} in netns {netns}: {source}")]
    Protocol {
        /// What was asked, naming the object.
        action: String,
        /// The namespace the connection is bound to.
        netns: String,
        /// What went wrong.
        source: rtnetlink::Error,
    },
    /// A system call or file operation failed (namespace mounts, sysctls, sockets).
    #[error("{action}: {source}")]
    Os {
        /// What was being done, naming the namespace or file.
        action: String,
        /// The underlying error.
        source: io::Error,
    },
    /// No link of that name exists in the namespace.
    #[error("no link named {name} in netns {netns}")]
    NoSuchLink {
        /// The link looked for.
        name: String,
        /// The namespace looked in.
        netns: String,
    },
    /// A value the kernel would reject or misread (name too long, prefix length > 32, ...).
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which kind of value.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The kernel answered with something this crate cannot read.
    #[error("{action} in netns {netns}: unexpected answer: {detail}")]
    Decode {
        /// What was asked.
        action: String,
        /// The namespace the connection is bound to.
        netns: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The running kernel lacks a feature (e.g. a qdisc kind not built in).
    #[error("{action} in netns {netns}: the kernel has no {feature}")]
    Unsupported {
        /// What was asked.
        action: String,
        /// The namespace the connection is bound to.
        netns: String,
        /// The missing feature and its kernel option.
        feature: &'static str,
    },
    /// The call needs a Tokio runtime with I/O enabled and found none.
    #[error("{action}: must be called inside a Tokio runtime")]
    NoRuntime {
        /// What was being done.
        action: String,
    },
    /// The helper thread working inside a namespace panicked.
    #[error("the thread working inside netns {netns} panicked")]
    ThreadPanicked {
        /// The namespace.
        netns: String,
    },
}

impl Error {
    /// The errno behind this error, if the kernel or a system call gave one (e.g. `EEXIST`
    /// when an object already exists).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } | Self::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn os(action: impl Into<String>, source: io::Error) -> Self {
        Self::Os {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, value: impl ToString, reason: &'static str) -> Self {
        Self::Invalid {
            what,
            value: value.to_string(),
            reason,
        }
    }
}

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub(crate) const IFNAME_MAX: usize = 15;

/// Longest namespace name (a file name under /run/netns).
pub(crate) const NETNS_NAME_MAX: usize = 255;

/// Checks a kernel object name: 1..=`max` bytes, none of `/`, `:`, NUL or whitespace, not `.`
/// or `..` (the kernel's `dev_valid_name` for interfaces, with `max` = [`IFNAME_MAX`]).
pub(crate) fn check_name(what: &'static str, name: &str, max: usize) -> crate::Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > max {
        "too long"
    } else if name == "." || name == ".." {
        "reserved"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        "contains '/', ':', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(Error::invalid(what, name, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        assert!(check_name("link", "eth0", IFNAME_MAX).is_ok());
        assert!(check_name("link", "abcdefghijklmno", IFNAME_MAX).is_ok());
        assert!(check_name("netns", "abcdefghijklmnop", NETNS_NAME_MAX).is_ok());
        for bad in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\0",
        ] {
            let err = check_name("link", bad, IFNAME_MAX).expect_err(bad);
            assert!(err.to_string().starts_with("invalid link"), "{err}");
        }
    }
}
