"""What the steps run that is more than shell: the step helper, `steplib.<hash>.pyz`, uploaded
beside the step library and run by it (`helper COMMAND ...` in _lib.sh.j2). Standard library
only; every command's error is one sentence on stderr that says what to do."""
