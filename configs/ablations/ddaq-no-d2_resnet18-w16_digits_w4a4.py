# DDAQ without the discrepancy discriminator (D2); importance still
# weights D1.
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
model = dict(loss_weights=dict(dis=0., q_dis=0.))
