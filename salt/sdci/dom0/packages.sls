# dom0 packages, through the UpdateVM (dom0 has no network): make, VMware Tools and SDW's test
# prerequisites. Then vmtoolsd is enabled and started: the host drives dom0 through VMware Tools
# guest operations (start a program, upload and download files).
{%- from "sdci/map.jinja" import sdci with context %}
{%- set pkgs = sdci.dom0_packages|join(' ') %}

sdci-dom0-packages:
  cmd.run:
    - name: qubes-dom0-update -y {{ pkgs }}
    - unless: rpm -q {{ pkgs }}

sdci-dom0-vmtoolsd:
  cmd.run:
    - name: systemctl enable --now vmtoolsd.service
    - unless: systemctl is-enabled --quiet vmtoolsd.service && systemctl is-active --quiet vmtoolsd.service
    - require:
      - cmd: sdci-dom0-packages
