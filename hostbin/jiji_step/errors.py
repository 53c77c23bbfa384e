"""The one error the step helper reports: a sentence for the operator, exit status 1."""


class StepError(Exception):
    pass
