# The two set-up commands of the README, and the steps they are made of.
SHELL := /bin/bash
STACK ?= lab
HOSTS ?= 3
JIJI_CACHE ?= /var/cache/jiji-net
VENV := .venv
# The lab stack: its project file and config live in .lab/ (made by `make up`, ignored by git), its
# state in .lab/state; `python -m deploy` runs the program through the Automation API (deploy/).
DEPLOY := PULUMI_CONFIG_PASSPHRASE= $(VENV)/bin/python -m deploy --stack $(STACK) --dir .lab \
	--backend file://$(CURDIR)/.lab/state

.PHONY: test up preview lab-up lab-down toolchain bench-dns bench-access bench-access-lab bench-program bench-lab tool lint

## test: install what the tests need (cached), then run every test
test:
	bash lab/toolchain.sh all
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/python -m pytest

## up: the main job: toolchain, 3 lab hosts with podman, the lab stack up through the real engine,
## a demo service found by name, and the commands to look at it
# The lab stack's config (hosts with their SSH host keys pinned, the encrypted SSH key, the
# encryption salt) lives in .lab/, not in the repository: a checkout stays clean.
STACK_CONFIG := .lab/Pulumi.$(STACK).yaml
up: toolchain
	JIJI_LAB_CONTAINERS=1 bash lab/lab.sh up $(HOSTS)
	bash lab/lab.sh stack-config $(STACK_CONFIG).hosts podman
	$(DEPLOY) pulumi -- stack select --create
	# The config is made anew from the hosts each time; only the stack's salt carries over.
	cat $(STACK_CONFIG).hosts > $(STACK_CONFIG).new
	{ grep -m1 '^encryptionsalt:' $(STACK_CONFIG) 2>/dev/null || true; } >> $(STACK_CONFIG).new
	mv $(STACK_CONFIG).new $(STACK_CONFIG)
	$(DEPLOY) pulumi -- config set --secret ssh_private_key < .lab/lab/id_ed25519
	$(DEPLOY) up --outputs-file .lab/outputs.json
	$(MAKE) --no-print-directory tool
	bash lab/lab.sh demo

## preview: what `up` would change on the lab stack, as diffs
preview:
	$(DEPLOY) preview --diff

toolchain:
	bash lab/toolchain.sh all

lab-up:
	bash lab/lab.sh up $(HOSTS)

lab-down:
	bash lab/lab.sh down

## bench-dns: jiji-dns against dnsmasq (queries/s, CPU per query), change latency, snapshot load
bench-dns:
	bash lab/toolchain.sh all
	$(VENV)/bin/python bench/dns.py

lint:
	$(VENV)/bin/ruff check hostbin tests bench jiji_net deploy command_provider __main__.py
	$(VENV)/bin/mypy hostbin/jiji_common hostbin/jiji_dns hostbin/jiji_ops hostbin/jiji_step jiji_net deploy command_provider
	$(VENV)/bin/python -m tests.shellcheck

## bench-access: 10,000 declared access peers in jiji-jit (registry looks, lookups, memory) against
## preloading them into wireguard-go
bench-access:
	bash lab/toolchain.sh all
	$(VENV)/bin/python bench/access_peers.py

## bench-access-lab: 10,000 declared access peers deployed on 3 lab hosts: up, no kernel loads
## them, jiji-jit's idle CPU, and preview --diff of a 10,001st (only the registry step)
bench-access-lab:
	bash lab/toolchain.sh all
	$(VENV)/bin/python bench/access_lab.py

## bench-lab: real `pulumi up` on 3, 8 and 16 lab hosts: cold, no-op, one server added, destroy
bench-lab:
	bash lab/toolchain.sh all
	$(VENV)/bin/python bench/lab_scale.py

## bench-program: evaluation time and peak memory of the program at 32-256 servers (mocks; and
## `pulumi preview` of 64 and 256 servers with the real CLI when it is installed)
bench-program:
	bash lab/toolchain.sh packages venv
	$(VENV)/bin/python -W ignore bench/program.py

## tool: build/jiji-net.pyz, the host tool's operator side (`python3 build/jiji-net.pyz -H all status`)
tool:
	bash lab/toolchain.sh packages venv
	$(VENV)/bin/python -m jiji_net.zipapps tool build/jiji-net.pyz
