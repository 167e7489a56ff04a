"""The agent simulator behind ``opamp-fast simulate``: tens of thousands of agents from one
process, against a running server (load tests, demos). Not imported by the server."""
