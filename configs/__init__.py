# The shipped experiment configs, installed as the package data simclr_tf.configs
# (setup.py maps this folder there), so that --config=NAME finds them anywhere.
