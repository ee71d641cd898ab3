# DDAQ W4A4 of RetinaNet R50-FPN with every conv at 4 bits (GDFQ convention;
# no 8-bit first/last layers; the image input at 8 bits, input_bits). Same
# requirements as ddaq_retinanet_w4a4.py.
_base_ = './ddaq_retinanet_w4a4.py'
model = dict(quantizer=dict(first_last_bits=None, first_last_layers=None))
