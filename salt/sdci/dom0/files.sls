# The sdci files in dom0: the sdci-dom0 package (or binary), the qrexec service and policy (byte-identical to
# the repository's qubes-rpc/, which salt://sdci/files/ links to), the job directory and the
# config file sdci-dom0 reads (~/.sdci/dom0.toml). Every path is prefixed with `sdci:root`
# (empty on Qubes), so CI can apply this state into a temporary directory.
{%- from "sdci/map.jinja" import sdci with context %}
{%- set root = sdci.root %}
{%- set lint = salt['cmd.which']('qubes-policy-lint') %}

{#- The sdci-dom0 RPM (packaging/build) when the operator placed it in salt/sdci/files/: it
    installs /usr/bin/sdci-dom0, the /usr/local/bin/sdci-dom0 link sdci.Run runs, and the same
    qrexec files as below (which then find them identical). Without it, the loose binary. #}
{%- set rpm = sdci.dom0_package %}
{%- if rpm and salt['cp.hash_file']('salt://sdci/files/' ~ rpm) %}
sdci-dom0-binary:
  pkg.installed:
    - sources:
      - sdci-dom0: salt://sdci/files/{{ rpm }}
{%- else %}
sdci-dom0-binary:
  file.managed:
    - name: {{ root }}/usr/local/bin/sdci-dom0
    - source: salt://sdci/files/sdci-dom0
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True
{%- endif %}

# The qrexec entry point. It runs sdci-dom0, so it comes after the binary.
sdci-qrexec-service:
  file.managed:
    - name: {{ root }}/etc/qubes-rpc/sdci.Run
    - source: salt://sdci/files/sdci.Run
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True
    - require:
      - sdci-dom0-binary

# A policy file with a syntax error makes EVERY qrexec call fail (Salt's own VM states and the
# updaters included), so where qubes-policy-lint exists (Qubes 4.2 and later) the new content is
# linted before it is moved into place; a file that fails the lint is never installed.
sdci-qrexec-policy:
  file.managed:
    - name: {{ root }}/etc/qubes/policy.d/30-sdci.policy
    - source: salt://sdci/files/30-sdci.policy
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
{%- if lint %}
    - check_cmd: {{ lint }}
{%- endif %}
    - require:
      - file: sdci-qrexec-service

sdci-dom0-state-dir:
  file.directory:
    - name: {{ sdci.home }}/.sdci
    - user: {{ sdci.dom0_user }}
    - group: {{ sdci.dom0_group }}
    - mode: '0700'
    - makedirs: True

# The host uploads each job file here through VMware guest operations (contracts §3).
sdci-dom0-jobs-dir:
  file.directory:
    - name: {{ sdci.home }}/.sdci/jobs
    - user: {{ sdci.dom0_user }}
    - group: {{ sdci.dom0_group }}
    - mode: '0700'
    - require:
      - file: sdci-dom0-state-dir

sdci-dom0-config:
  file.managed:
    - name: {{ sdci.home }}/.sdci/dom0.toml
    - user: {{ sdci.dom0_user }}
    - group: {{ sdci.dom0_group }}
    - mode: '0644'
    - source: salt://sdci/files/dom0.toml.jinja
    - template: jinja
    - require:
      - file: sdci-dom0-state-dir
