"""The data the paper trains on: MNIST and Fashion-MNIST in memory (`mnist`, put in place by `make data`:
`fetch`), training-batch streams and exact-once evaluation for tensors and image folders (`loaders`),
test-time crops (`crops`) and the test sets repro.evaluate scores (`evalsets`)."""
