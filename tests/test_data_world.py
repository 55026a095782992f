"""The generated world: determinism for a seed, facts only in the text corpus, media as described."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from flamingo_jax.data.world import EVAL_SUBSETS, SUBSET_KINDS, World, WorldConfig, WorldSource

CFG = WorldConfig(seed=3, image_size=32, scale=0.02, video_frames=8)


@pytest.fixture(scope='module')
def world():
  return World(CFG)


def _decode(b):
  return np.asarray(Image.open(io.BytesIO(b)))


@pytest.mark.parametrize('subset', sorted(SUBSET_KINDS))
def test_same_seed_same_records_other_seed_differs(world, subset):
  split = CFG.splits(subset)[-1]
  again = World(WorldConfig(seed=3, image_size=32, scale=0.02, video_frames=8))
  other = World(WorldConfig(seed=4, image_size=32, scale=0.02, video_frames=8))
  for i in (0, 1):
    assert world.record(subset, split, i) == again.record(subset, split, i)
  assert [world.record(subset, split, i) for i in (0, 1)] != [other.record(subset, split, i) for i in (0, 1)]


def test_record_does_not_depend_on_world_size(world):
  bigger = World(WorldConfig(seed=3, image_size=32, scale=0.05, video_frames=8))
  assert world.record('interleaved', 'train', 5) == bigger.record('interleaved', 'train', 5)


def test_entities_have_distinct_made_up_names_and_shapes(world):
  names = [e.name for e in world.entities]
  words = names + [e.home for e in world.entities] + [e.food for e in world.entities]
  assert len(set(words)) == len(words)
  assert len({e.shape for e in world.entities}) == len(world.entities)


def _all_text(rec):
  parts = [rec.get('text', ''), rec.get('question', '')] + list(rec.get('texts', [])) + list(rec.get('captions', []))
  return ' '.join(parts)


def test_facts_appear_only_in_the_text_corpus(world):
  facts = [w for e in world.entities for w in (e.home, e.food, e.sound)]
  pattern = re.compile(r'\b(' + '|'.join(re.escape(f) for f in facts) + r')\b')
  for subset in SUBSET_KINDS:
    if subset == 'text':
      continue
    for split in CFG.splits(subset):
      for i in range(CFG.num_records(subset, split)):
        assert not pattern.search(_all_text(world.record(subset, split, i, media=False))), (subset, i)
  corpus = ' '.join(world.record('text', 'train', i, media=False)['text'] for i in range(CFG.num_records('text', 'train')))
  found = set(pattern.findall(corpus))
  assert len(found) > len(facts) // 2  # most facts are stated in the tiny corpus already


def test_knowledge_answers_are_facts_of_the_depicted_kind(world):
  facts = {w for e in world.entities for w in (e.home, e.food, e.sound)}
  for i in range(CFG.num_records('knowledge_vqa', 'test')):
    rec = world.record('knowledge_vqa', 'test', i)
    assert rec['answers'][0] in facts and rec['question_type'] in ('home', 'food', 'sound')


def test_counting_answers_use_digits_while_training_text_spells_numbers():
  """The answer format must come from the shots: training text never writes counts as digits."""
  big = World(WorldConfig(seed=3, scale=0.5))
  recs = [big.record('vqa', 'train', i, media=False) for i in range(big.config.num_records('vqa', 'train'))]
  counts = [r['answers'][0] for r in recs if r['question_type'] == 'count']
  assert len(counts) > 10 and all(a.isdigit() for a in counts)
  for i in range(big.config.num_records('long_text', 'train')):
    assert not re.search(r'\d', big.record('long_text', 'train', i, media=False)['text'])


def test_images_and_videos(world):
  img = _decode(world.record('captions', 'test', 0)['image'])
  assert img.shape == (32, 32, 3) and img.std() > 5
  rec = world.record('video_qa', 'test', 1)
  frames = [_decode(f).astype(int) for f in rec['frames']]
  assert len(frames) == CFG.video_frames and rec['fps'] == CFG.video_fps
  assert np.abs(frames[-1] - frames[0]).sum() > 0  # something moves or changes size
  page = world.record('interleaved', 'train', 2)
  assert len(page['images']) == len(page['image_positions']) >= 1
  assert all(0 <= p <= len(page['texts']) for p in page['image_positions'])


def test_eval_sets_have_support_and_test_splits():
  for subset in EVAL_SUBSETS:
    assert set(CFG.splits(subset)) == {'train', 'test'}
  src = WorldSource(World(CFG), 'vqa', 'test')
  assert len(src) == CFG.num_records('vqa', 'test') and src[0]['id'] == 'vqa-test-0'
  with pytest.raises(IndexError):
    src[len(src)]
