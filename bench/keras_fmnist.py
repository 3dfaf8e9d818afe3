"""The original notebook's model, run exactly as the notebook runs it (Keras on TensorFlow-CPU):
Flatten -> Dense(128, relu) -> Dense(10), Adam, sparse categorical cross-entropy from logits,
model.fit(epochs=5) with its default batch of 32 and shuffling."""
import os
import time

from common import args, load, report

a = args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(a["threads"])
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.keras.utils.set_random_seed(a["seed"])

(train_x, train_y, test_x, test_y), load_seconds = load()
model = tf.keras.Sequential([
    tf.keras.Input(shape=(28, 28)),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(128, activation="relu"),
    tf.keras.layers.Dense(10),
])
model.compile(optimizer="adam",
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])


class EpochTimes(tf.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


times = EpochTimes()
start = time.perf_counter()
model.fit(train_x, train_y, epochs=a["epochs"], batch_size=a["batch"], verbose=0, callbacks=[times])
train_seconds = time.perf_counter() - start
_, accuracy = model.evaluate(test_x, test_y, verbose=0)
model.save_weights("/tmp/keras-fmnist.weights.h5")
report(program="keras", load_seconds=load_seconds, train_seconds=train_seconds,
       epoch_seconds=times.times, test_accuracy=float(accuracy))
