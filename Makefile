# The two commands of the README. Both set up everything they need first
# (a pinned virtual environment, reused while requirements/lock.txt is unchanged).
.PHONY: demo test

demo:  ## set up and run the server on the built-in demo
	@venv="$$(bash scripts/bootstrap.sh)" && exec "$$venv/bin/desiderata" serve

test:  ## set up and run the whole test suite (what CI runs)
	@bash scripts/test.sh
