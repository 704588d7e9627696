"""Upgrading Caffe's older net and solver formats (placeholder: being written)."""


def upgrade_net_param(param, source='<net>'):
    return False


def upgrade_solver_param(param, source='<solver>'):
    return False
