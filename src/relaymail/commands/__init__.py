"""The front ends: `relaymail ...` and `sendmail`. They parse, call and print; no mail logic."""
