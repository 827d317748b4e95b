.PHONY: run test bench

# Run the service on http://127.0.0.1:8000/ (installs everything on first use). Ctrl-C stops it.
run:
	scripts/run.sh

# Run the whole test suite against the real database (installs test dependencies on first use).
test:
	scripts/test.sh
