# DDAQ without the BN-statistics discriminator (D1).
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
model = dict(loss_weights=dict(bns=0.))
