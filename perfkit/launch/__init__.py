"""Starting and reaching servers: the embedded perfkit_server, a local tritonserver, docker, or a remote URL."""
