"""The local environment of real servers for tests, the demo and benchmarks.

Never imported by the operator runtime: it needs the ``dev`` extra and toolchains (Go, Maven, Java)
that a production image does not carry.
"""
