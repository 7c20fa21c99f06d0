# Convenience wrappers around bootstrap.py (which needs nothing but Python 3.11+ and pip).
.PHONY: run test lint bench-harmonic clean
run:
	python3 bootstrap.py run
test:
	python3 bootstrap.py test
lint:
	.venv/bin/ruff check src tests benchmarks workflows
bench-harmonic:
	.venv/bin/python benchmarks/harmonic_accuracy.py
clean:
	rm -rf .venv out
