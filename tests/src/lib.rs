//! Test harness for the privileged tests: network namespaces, veth pairs, and the `rasp-proxy` binary.
