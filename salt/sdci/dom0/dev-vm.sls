# The dev VM (a StandaloneVM, so /usr/local and /etc survive its reboots): created with the
# documented template, label and volume sizes when missing; an existing VM is left as it is
# (sizes are applied only right after creation, so a re-run never tries to shrink a volume).
{%- from "sdci/map.jinja" import sdci with context %}
{%- set vm = sdci.dev_vm %}

sdci-dev-vm:
  cmd.run:
    - name: qvm-create --class StandaloneVM --template {{ sdci.dev_vm_template }} --label {{ sdci.dev_vm_label }} {{ vm }}
    - unless: qvm-check --quiet {{ vm }}

sdci-dev-vm-root-size:
  cmd.run:
    - name: qvm-volume resize {{ vm }}:root {{ sdci.dev_vm_root_size }}
    - onchanges:
      - cmd: sdci-dev-vm

sdci-dev-vm-private-size:
  cmd.run:
    - name: qvm-volume resize {{ vm }}:private {{ sdci.dev_vm_private_size }}
    - onchanges:
      - cmd: sdci-dev-vm

sdci-dev-vm-autostart:
  cmd.run:
    - name: qvm-prefs {{ vm }} autostart {{ sdci.dev_vm_autostart }}
    - unless: test "$(qvm-prefs {{ vm }} autostart)" = "{{ sdci.dev_vm_autostart }}"
    - require:
      - cmd: sdci-dev-vm
