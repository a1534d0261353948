//! Security review fixes in the token broker and metrics: single flight per grant, bounded subjects and scopes, bounded labels.
