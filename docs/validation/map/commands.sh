#!/usr/bin/env bash
# The validity map's runs: every command that trained the committed runs of docs/validation/map,
# in the order they ran. Each is resumable (completed runs are skipped), so the file can be run
# again as a whole; `calibrate validate --emit-commands` lists a grid's missing runs instead, one
# `calibrate train` line each, for a cluster.
# Protocol: embedded glyphs, 50 training / 10 test images per class, MLP1024, batch 256,
# 20 epochs, cosine schedule, 40 % symmetric noise (and 40 % pairflip for MAE's ε at K = 100),
# literature presets (--preset cifar100). Optimizers:
#   SGD:   lr 0.1, momentum 0.9, weight decay 0 (the robust-loss literature's SGD recipe, at the
#          glyph protocol's weight decay)
#   AdamW: lr 1e-3, betas (0.9, 0.999), weight decay 0 (Adam's usual learning rate; weight
#          decay 0 so that the two optimizers differ in the update rule alone)
set -euo pipefail
C="--train-per-class 50 --test-per-class 10 --epochs 20 --preset cifar100 --threads 1 --jobs 2 -q"
# CE and MAE have no preset: their grids of (2)-(5) ran with --preset cifar100, which they ignored
# then and calibrate now refuses (a preset that no loss of the grid has); the runs are the same
NP="--train-per-class 50 --test-per-class 10 --epochs 20 --threads 1 --jobs 2 -q"
SGD="--optimizer sgd --lr 0.1"
ADAMW="--optimizer adamw --lr 1e-3 --weight-decay 0"
GCE_Q="q=0.02,0.05,0.075,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7,0.9"

# (1) GCE's q at the reference K = 10 (where its empirical best is taken)
calibrate validate $C $SGD --classes 10 --noise 0.4 --seeds 0,1,2 --losses gce --sweep $GCE_Q --out runs/map/sgd-k10
calibrate validate $C $ADAMW --classes 10 --noise 0.4 --seeds 0,1,2 --losses gce --sweep $GCE_Q --out runs/map/adamw-k10
# the same with 100 test images per class and 6 seeds (K = 10 has 100 test images at 10 per
# class: a run's accuracy moves in steps of 1 %, too coarse to place the best q)
calibrate validate $C $SGD --classes 10 --test-per-class 100 --noise 0.4 --seeds 0-5 --losses gce --sweep $GCE_Q --out runs/map/sgd-k10-t100
calibrate validate $C $ADAMW --classes 10 --test-per-class 100 --noise 0.4 --seeds 0-5 --losses gce --sweep $GCE_Q --out runs/map/adamw-k10-t100
# (2) K = 100: CE, MAE's ε, GCE's q
for OPT in sgd adamw; do
  O=$SGD; [ $OPT = adamw ] && O=$ADAMW
  calibrate validate $NP $O --classes 100 --noise 0.4,pairflip:0.4 --seeds 0,1,2 --losses ce --out runs/map/$OPT-k100
  calibrate validate $NP $O --classes 100 --noise 0.4,pairflip:0.4 --seeds 0,1,2 --losses mae --sweep eps=0,1,1.5,2,2.2,match,2.6,3,3.6,4.5,peak --out runs/map/$OPT-k100
  calibrate validate $C $O --classes 100 --noise 0.4 --seeds 0,1,2 --losses gce --sweep $GCE_Q --out runs/map/$OPT-k100
done
# (3) K = 1000, AdamW: CE and MAE's ε
calibrate validate $NP $ADAMW --classes 1000 --noise 0.4 --seeds 0,1 --losses ce --out runs/map/adamw-k1000
calibrate validate $NP $ADAMW --classes 1000 --noise 0.4 --seeds 0,1 --losses mae --sweep eps=0,2,3,3.5,4,4.25,match,5,5.5,6,peak,8 --out runs/map/adamw-k1000
# (4) K = 1000, SGD: MAE's ε densified around the computed 4.71 (the other points: docs/validation/k1000)
calibrate validate $NP $SGD --classes 1000 --noise 0.4 --seeds 0,1,2 --losses mae --sweep eps=3.5,4.25,5 --out runs/map/sgd-k1000
# (5) K = 1000: GCE's q (SGD: the points docs/validation/k1000 lacks)
calibrate validate $C $ADAMW --classes 1000 --noise 0.4 --seeds 0,1 --losses gce --sweep q=0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7 --out runs/map/adamw-k1000
calibrate validate $C $SGD --classes 1000 --noise 0.4 --seeds 0,1,2 --losses gce --sweep q=0.15,0.25 --out runs/map/sgd-k1000
# (5b) a second model for MAE's ε at K = 1000: a narrower, deeper MLP (3 hidden layers of 256);
# with AdamW, a fixed point at ε = ½ ln K = 3.454 (a candidate fitted to the AdamW optima of
# mlp1024 at K = 100 and 1000, tested here on a model it was not fitted on)
calibrate validate $NP $ADAMW --classes 1000 --model mlp256x3 --noise 0.4 --seeds 0,1 --losses ce --out runs/map/adamw-k1000-mlp256x3
calibrate validate $NP $ADAMW --classes 1000 --model mlp256x3 --noise 0.4 --seeds 0,1 --losses mae --sweep eps=2,2.5,3,3.454,4,match,5.5 --out runs/map/adamw-k1000-mlp256x3
# (the same model with SGD: section (10))
# (6) the transfer points: GCE's q transferred from the empirical best q at K_ref, added to the
# sweeps above once the reference sweep is complete (`python docs/validation/map/build.py
# missing` prints these commands; the fixed points are complete and skipped)
#   (each folder's grid.json lists them too, under "invocations"); as they ran:
#   calibrate validate --train-per-class 50 --test-per-class 10 --epochs 20 --preset cifar100 --threads 1 --jobs 2 -q --optimizer adamw --lr 1e-3 --weight-decay 0 --classes 100 --noise 0.4 --seeds 0,1,2 --losses gce --sweep q=0.02,0.05,0.075,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7,0.9,calibrated:10:0.7 --out runs/map/adamw-k100
#   calibrate validate --train-per-class 50 --test-per-class 10 --epochs 20 --preset cifar100 --threads 1 --jobs 2 -q --optimizer sgd --lr 0.1 --classes 100 --noise 0.4 --seeds 0,1,2 --losses gce --sweep q=0.02,0.05,0.075,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7,0.9,calibrated:10:0.1 --out runs/map/sgd-k100
#   calibrate validate --train-per-class 50 --test-per-class 10 --epochs 20 --preset cifar100 --threads 1 --jobs 2 -q --optimizer sgd --lr 0.1 --classes 1000 --noise 0.4 --seeds 0,1,2 --losses gce --sweep q=0.15,0.25,calibrated:10:0.1,calibrated:100:0.2 --out runs/map/sgd-k1000
#   calibrate validate --train-per-class 50 --test-per-class 10 --epochs 20 --preset cifar100 --threads 1 --jobs 2 -q --optimizer sgd --lr 0.1 --classes 1000 --noise 0.4 --seeds 0,1,2 --losses gce --sweep q=0.15,0.25,calibrated:10:0.1,calibrated:100:0.2,calibrated:100:0.7 --out runs/map/sgd-k1000
#   calibrate validate --train-per-class 50 --test-per-class 10 --epochs 20 --preset cifar100 --threads 1 --jobs 2 -q --optimizer adamw --lr 1e-3 --weight-decay 0 --classes 1000 --noise 0.4 --seeds 0,1 --losses gce --sweep q=0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7,calibrated:10:0.7,calibrated:100:0.5,calibrated:100:0.7 --out runs/map/adamw-k1000
# (7) the matched-steps budget: the reference K = 100 trained 200 epochs, as many optimizer
# steps as K = 1000 in 20 (4000 against 3920)
calibrate validate $C $SGD --classes 100 --epochs 200 --noise 0.4 --seeds 0,1 --losses gce --sweep q=0.1,0.2,0.3,0.4,0.5,0.7,0.9 --out runs/map/sgd-k100-200ep
calibrate validate $C $ADAMW --classes 100 --epochs 200 --noise 0.4 --seeds 0,1 --losses gce --sweep q=0.1,0.2,0.3,0.4,0.5,0.7,0.9 --out runs/map/adamw-k100-200ep
# (8) a convolutional model: cnn8 at K = 100, 18 s per epoch on one core (at K = 1000, ten times
# the images, one 20-epoch run is 1 to 1.5 hours of one core: not run); more in (11) and (12)
calibrate validate $NP $SGD --classes 100 --model cnn8 --noise 0.4 --seeds 0,1 --losses ce --out runs/map/sgd-k100-cnn8
calibrate validate $NP $SGD --classes 100 --model cnn8 --noise 0.4 --seeds 0,1 --losses mae --sweep eps=1.6,2,match,2.8,3.6 --out runs/map/sgd-k100-cnn8
# (9) other computed values, SGD, K = 1000: GCE's logit bias (gce*), NCE+AGCE's and NF-MAE's α
# transferred from their CIFAR-100 presets (α = 10 at K = 100)
calibrate validate $C $SGD --classes 1000 --noise 0.4 --seeds 0,1 --losses gce --sweep eps=3,4,4.25,match,5,5.5,6 --out runs/map/sgd-k1000
calibrate validate $C $SGD --classes 1000 --noise 0.4 --seeds 0,1 --losses nce-agce --sweep alpha=10,120,140,calibrated,200,250,1000 --out runs/map/sgd-k1000
calibrate validate $C $SGD --classes 1000 --noise 0.4 --seeds 0,1 --losses nf-mae --sweep alpha=10,150,180,calibrated,250,300,1000 --out runs/map/sgd-k1000
# (10) the second MLP with SGD (mlp256x3, K = 1000), the AdamW candidate ε = 3.454 included
calibrate validate $NP $SGD --classes 1000 --model mlp256x3 --noise 0.4 --seeds 0,1 --losses ce --out runs/map/sgd-k1000-mlp256x3
calibrate validate $NP $SGD --classes 1000 --model mlp256x3 --noise 0.4 --seeds 0,1 --losses mae --sweep eps=3.454,4,match,5.5,6 --out runs/map/sgd-k1000-mlp256x3
# (11) GCE's q on cnn8 with SGD: the reference sweep at K = 10 (100 test images per class,
# 4 seeds), then K = 100 with the point transferred from its best q (0.2; solved per run from
# cnn8's measured logit std: q = 0.12)
calibrate validate $C $SGD --classes 10 --test-per-class 100 --model cnn8 --noise 0.4 --seeds 0-3 --losses gce --sweep q=0.02,0.05,0.1,0.15,0.2,0.3,0.5,0.7 --out runs/map/sgd-k10-t100-cnn8
# (12) cnn8 with AdamW at K = 100: CE and MAE's ε
calibrate validate $NP $ADAMW --classes 100 --model cnn8 --noise 0.4 --seeds 0,1 --losses ce --out runs/map/adamw-k100-cnn8
calibrate validate $NP $ADAMW --classes 100 --model cnn8 --noise 0.4 --seeds 0,1 --losses mae --sweep eps=1.6,2,match,2.8,3.6 --out runs/map/adamw-k100-cnn8
# (11, continued) GCE's q on cnn8 at K = 100 with SGD
calibrate validate $C $SGD --classes 100 --model cnn8 --noise 0.4 --seeds 0,1 --losses gce --sweep q=0.08,0.1,0.15,0.18,0.3,calibrated:10:0.2 --out runs/map/sgd-k100-cnn8
