"""An independent reference for one MoCo training step, written for this project from the method's definition.

What it follows is the MoCo papers' description of a step (v1 section 3 and its
Algorithm 1, v2's changes; docs/protocols.md section 1), in plain words:

  - the key encoder's parameters move towards the query encoder's:
    each key parameter becomes m times itself plus (1 - m) times the query one;
  - every query and key is an encoder output divided by its Euclidean length;
  - keys are computed without gradient, from the key images put through the key
    encoder in a shuffled order (shuffle BN), and put back in the original order;
  - for every query, the logits are its dot product with its own key, followed by
    its dot products with every key in the queue, all divided by T; the loss is
    minus the log of the softmax probability of the first logit, averaged over the batch;
  - with the symmetric variant, each of the two views acts once as query and once
    as key, and the two losses are added;
  - afterwards the new keys replace the oldest keys of the queue.

It is deliberately naive and shares no code with mocolab/moco.py: the queue is
a Python list with an integer pointer, dot products are taken one pair at a
time, the softmax is written out. It only ever runs on tiny batches in tests.
"""

import torch


def unit(v: torch.Tensor) -> torch.Tensor:
    """v divided by its Euclidean length."""
    return v / torch.sqrt(sum(x * x for x in v))


class NaiveMoCo:
    """The reference step around two given encoders and a given initial queue (a list of K key vectors)."""

    def __init__(self, encoder_q, encoder_k, initial_queue: list, m: float, T: float, symmetric: bool):
        self.encoder_q, self.encoder_k = encoder_q, encoder_k
        self.queue = [key.clone() for key in initial_queue]  # K keys; slot `pointer` is the oldest
        self.pointer = 0
        self.m, self.T, self.symmetric = m, T, symmetric

    def follow_query_encoder(self) -> None:
        with torch.no_grad():
            for key_param, query_param in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
                key_param.copy_(self.m * key_param + (1 - self.m) * query_param)

    def keys_of(self, images: torch.Tensor) -> list:
        """Unit keys of `images`, encoded in a random order drawn from torch's global generator."""
        order = torch.randperm(len(images)).tolist()
        with torch.no_grad():
            encoded = self.encoder_k(images[order])
        keys = [None] * len(images)
        for row, image_index in enumerate(order):  # put each key back at its own image's place
            keys[image_index] = unit(encoded[row])
        return keys

    def loss(self, query_images: torch.Tensor, key_images: torch.Tensor) -> tuple:
        """(mean InfoNCE loss of the batch, its keys), against the queue as it is now."""
        queries = [unit(row) for row in self.encoder_q(query_images)]
        keys = self.keys_of(key_images)
        total = 0.0
        for q, k in zip(queries, keys):
            logits = [torch.dot(q, k) / self.T] + [torch.dot(q, negative) / self.T for negative in self.queue]
            top = max(float(z) for z in logits)  # subtracted inside the exponentials, for stability only
            normaliser = sum(torch.exp(z - top) for z in logits)
            total = total - (logits[0] - top - torch.log(normaliser))
        return total / len(queries), keys

    def step(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """One MoCo step's loss (to backpropagate); the queue has taken the new keys afterwards."""
        self.follow_query_encoder()
        if self.symmetric:
            loss_12, keys_of_x2 = self.loss(x1, x2)
            loss_21, keys_of_x1 = self.loss(x2, x1)
            loss, new_keys = loss_12 + loss_21, keys_of_x1 + keys_of_x2
        else:
            loss, new_keys = self.loss(x1, x2)
        for key in new_keys:
            self.queue[self.pointer] = key.detach().clone()
            self.pointer = (self.pointer + 1) % len(self.queue)
        return loss
