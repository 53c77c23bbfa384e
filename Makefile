# The two set-up commands of the README, and the steps they are made of.
SHELL := /bin/bash
STACK ?= lab
HOSTS ?= 3
JIJI_CACHE ?= /var/cache/jiji-net
VENV := .venv
# A fully offline Pulumi: local state in an ignored directory, no update check, no plugin download.
PULUMI_ENV := PULUMI_BACKEND_URL=file://$(CURDIR)/.lab/state PULUMI_CONFIG_PASSPHRASE= \
	PULUMI_SKIP_UPDATE_CHECK=true PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true \
	PATH=$(JIJI_CACHE)/pulumi/v$$(. lab/versions.env; echo $$PULUMI_VERSION)/bin:$$PATH

.PHONY: test up lab-up lab-down toolchain bench-dns bench-program bench-lab tool lint

## test: install what the tests need (cached), then run every test
test:
	bash lab/toolchain.sh packages venv corrosion pulumi-cli
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/python -m pytest

## up: the main job: toolchain, lab hosts, then `pulumi up` of the lab stack
# The lab stack's config (hosts with their SSH host keys pinned, the encrypted SSH key, the
# encryption salt) lives in .lab/, not in the repository: a checkout stays clean.
STACK_CONFIG := .lab/Pulumi.$(STACK).yaml
up: toolchain lab-up
	mkdir -p .lab/state
	bash lab/lab.sh stack-config $(STACK_CONFIG).hosts
	$(PULUMI_ENV) pulumi stack select --create $(STACK)
	# `stack select --create` writes the new stack's salt into stacks/: it moves to .lab/ with the rest.
	cat $(STACK_CONFIG).hosts > $(STACK_CONFIG).new
	{ cat $(STACK_CONFIG) stacks/Pulumi.$(STACK).yaml 2>/dev/null | grep -m1 '^encryptionsalt:' || true; } >> $(STACK_CONFIG).new
	mv $(STACK_CONFIG).new $(STACK_CONFIG)
	rm -f stacks/Pulumi.$(STACK).yaml
	$(PULUMI_ENV) pulumi config set --secret ssh_private_key --stack $(STACK) --config-file $(STACK_CONFIG) < .lab/lab/id_ed25519
	$(PULUMI_ENV) pulumi up --yes --stack $(STACK) --config-file $(STACK_CONFIG)

toolchain:
	bash lab/toolchain.sh all

lab-up:
	bash lab/lab.sh up $(HOSTS)

lab-down:
	bash lab/lab.sh down

## bench-dns: jiji-dns against dnsmasq (queries/s, CPU per query), change latency, snapshot load
bench-dns:
	bash lab/toolchain.sh packages venv corrosion pulumi-cli
	$(VENV)/bin/python bench/dns.py

lint:
	$(VENV)/bin/ruff check hostbin tests bench components __main__.py
	$(VENV)/bin/mypy hostbin/jiji_dns hostbin/jiji_ops components
	$(VENV)/bin/python -m tests.shellcheck

## bench-lab: real `pulumi up` on 3, 8 and 16 lab hosts: cold, no-op, one server added, destroy
bench-lab:
	bash lab/toolchain.sh packages venv corrosion pulumi-cli
	$(VENV)/bin/python bench/lab_scale.py

## bench-program: evaluation time and peak memory of the program at 32-256 servers (mocks; and
## `pulumi preview` of 64 and 256 servers with the real CLI when it is installed)
bench-program:
	bash lab/toolchain.sh packages venv
	$(VENV)/bin/python -W ignore bench/program.py

## tool: build/jiji-net.pyz, the host tool's operator side (`python3 build/jiji-net.pyz -H all status`)
tool:
	bash lab/toolchain.sh packages venv
	$(VENV)/bin/python hostbin/build_zipapp.py --tool build/jiji-net.pyz
