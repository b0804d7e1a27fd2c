# The dev VM: the packages SDW's build needs there, sdci-agent and its config.
# Apply with: sudo qubesctl --show-output --skip-dom0 --targets=sd-dev state.sls sdci.sd-dev
# (Salt reaches the VM over qrexec through the management DispVM.)
{%- from "sdci/map.jinja" import sdci with context %}
{%- set root = sdci.root %}

sdci-dev-packages:
  pkg.installed:
    - pkgs: {{ sdci.dev_vm_packages|json }}

{#- The sdci-agent .deb (packaging/build) when the operator placed it in salt/sdci/files/
    (it installs /usr/bin/sdci-agent); without it, the loose binary in /usr/local/bin. #}
{%- set deb = sdci.dev_vm_package %}
{%- if deb and salt['cp.hash_file']('salt://sdci/files/' ~ deb) %}
sdci-agent-binary:
  pkg.installed:
    - sources:
      - sdci-agent: salt://sdci/files/{{ deb }}
    - require:
      - pkg: sdci-dev-packages
{%- else %}
sdci-agent-binary:
  file.managed:
    - name: {{ root }}/usr/local/bin/sdci-agent
    - source: salt://sdci/files/sdci-agent
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True
{%- endif %}

sdci-agent-config:
  file.managed:
    - name: {{ root }}/etc/sdci/agent.toml
    - source: salt://sdci/files/agent.toml.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
