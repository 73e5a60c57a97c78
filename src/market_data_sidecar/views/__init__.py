"""The operator's views of a sidecar: one model (`model`), one formatting module
(`format`), and its renderers: the terminal and log lines (`terminal`), the HTML page
(`page`), and the `status` command that reads a sidecar over HTTP (`command`)."""
