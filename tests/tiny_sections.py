"""Tiny config sections shared by the PCL and trainer tests (width-4 networks, paper view settings)."""

MODEL = {"encoder": "facecycle", "width": 4, "projection": {"hidden_dim": 16, "out_dim": 8},
         "decoder": {"fc_dim": 8, "channels": [4, 4, 4, 4, 4]}}
VIEWS = {"crop_ratio": 0.4, "jitter_p": 0.8, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2,
         "grayscale_p": 0.2, "blur_p": 0.8, "blur_kernel_fraction": 0.1, "blur_sigma": [0.1, 2.0], "sobel_p": 0.6,
         "sobel_overflow": "fixed"}
PCL = {"noise_std": 0.4, "recon_weight": 1.0, "temperature": 0.07, "neg_alpha": 1.6, "pose_batch": 2,
       "n_negatives": 3, "pose_negatives": "fixed", "optimizer": "fixed", "pose_fc_batches": "fixed",
       "pose_mixup_lambdas": "fixed", "decoder_order": "fixed",
       "dwa": {"enabled": True, "temperature": 2.0, "start": 2},
       "ablation": {"pdd": True, "orth": True, "flip_swap": True, "pose_step": True}}
