// loom._C._data: loom's C++ datasets, transforms, samplers, DataLoader and
// text data (include/loom/data). python/loom/utils/data arranges them as
// torch.utils.data and torchvision: a dataset backed by one of these is
// loaded by the C++ DataLoader (worker threads, C++ collation), any other
// Python dataset by the Python loop there.
//
// Python objects held by C++ (a Python transform or sampler) live in a
// shared_ptr whose deleter takes the GIL: the loader copies and drops them
// on threads that do not hold it.
#include "bind.h"

namespace loom::python {

namespace {

using data::Example;
using data::SampleGenerator;

template <class T>
std::shared_ptr<T> held_by_cpp(T obj) {
  return std::shared_ptr<T>(new T(std::move(obj)), [](T* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

py::tuple example_to_python(Example e) {
  return py::make_tuple(wrap(std::move(e.data)), e.target.defined() ? wrap(std::move(e.target)) : py::none());
}

// A seed drawn from `generator` (the global one when None), as PyTorch's
// loader draws its base seed from torch's generator.
uint64_t draw_seed(std::optional<Generator> generator) {
  return static_cast<uint64_t>(randint(0, int64_t{1} << 62, {}, kInt64, std::move(generator)).item<int64_t>());
}

// A transform as a Python object; the classes of loom.utils.data.transforms
// derive from it.
struct PyTransform {
  data::Transform fn;
};

// A Python callable on an example's data (a tensor to a tensor).
data::Transform transform_from_callable(py::function fn) {
  auto f = held_by_cpp(std::move(fn));
  return [f](Example e, SampleGenerator&) {
    py::gil_scoped_acquire gil;
    e.data = py::cast<Tensor>((*f)(wrap(std::move(e.data))));
    return e;
  };
}

// Any Python sampler (an iterable of indices with __len__) for the C++ loader.
class PySampler : public data::Sampler {
 public:
  explicit PySampler(py::object sampler) : sampler_(held_by_cpp(std::move(sampler))) {}
  std::vector<int64_t> indices(int64_t) const override {
    py::gil_scoped_acquire gil;
    std::vector<int64_t> out;
    for (py::handle i : *sampler_) out.push_back(py::cast<int64_t>(i));
    return out;
  }
  int64_t size() const override {
    py::gil_scoped_acquire gil;
    return static_cast<int64_t>(py::len(*sampler_));
  }

 private:
  std::shared_ptr<py::object> sampler_;
};

// The loader's worker threads may wait for the GIL (a Python transform or
// sampler), so the loader and its iterators are dropped without it.
struct PyDataLoader {
  std::unique_ptr<data::DataLoader> loader;
  ~PyDataLoader() {
    py::gil_scoped_release release;
    loader.reset();
  }
};

struct PyBatchIterator {
  explicit PyBatchIterator(data::DataLoader* l) : loader(l) {}
  data::DataLoader* loader;
  data::DataLoader::Iterator it;
  bool started = false;
  ~PyBatchIterator() {
    py::gil_scoped_release release;
    it = {};
  }
  py::tuple next() {
    {
      py::gil_scoped_release release;
      if (!started) {
        it = loader->begin();
        started = true;
      } else if (it != loader->end()) {
        ++it;
      }
    }
    if (it == loader->end()) throw py::stop_iteration();
    return py::make_tuple(wrap(it->data), it->target.defined() ? wrap(it->target) : py::none());
  }
};

}  // namespace

void bind_data(py::module_& root) {
  py::module_ m = root.def_submodule("_data", "loom's C++ data loading (use loom.utils.data)");
  using data::Dataset;

  py::class_<Dataset, std::shared_ptr<Dataset>>(m, "Dataset")
      .def("__len__", &Dataset::size)
      .def(
          "get",
          [](Dataset& d, int64_t index) {
            Example e;
            {
              py::gil_scoped_release release;
              e = d.get(index);
            }
            return example_to_python(std::move(e));
          },
          py::arg("index"));

  py::class_<data::TensorDataset, Dataset, std::shared_ptr<data::TensorDataset>>(m, "TensorDataset")
      .def(py::init([](Tensor data, Tensor targets) {
             return targets.defined() ? std::make_shared<data::TensorDataset>(std::move(data), std::move(targets))
                                      : std::make_shared<data::TensorDataset>(std::move(data));
           }),
           py::arg("data"), py::arg("targets") = py::none());
  py::class_<data::Subset, Dataset, std::shared_ptr<data::Subset>>(m, "Subset")
      .def(py::init<std::shared_ptr<Dataset>, std::vector<int64_t>>(), py::arg("dataset"), py::arg("indices"));
  py::class_<data::ConcatDataset, Dataset, std::shared_ptr<data::ConcatDataset>>(m, "ConcatDataset")
      .def(py::init<std::vector<std::shared_ptr<Dataset>>>(), py::arg("datasets"));
  py::class_<data::MNIST, Dataset, std::shared_ptr<data::MNIST>>(m, "MNIST")
      .def_property_readonly("images", &data::MNIST::images)
      .def_property_readonly("targets", &data::MNIST::targets);
  m.def("mnist", &data::mnist, py::arg("root"), py::arg("train") = true, py::call_guard<py::gil_scoped_release>());
  m.def("fashion_mnist", &data::fashion_mnist, py::arg("root") = data::kFashionMnistRoot, py::arg("train") = true,
        py::call_guard<py::gil_scoped_release>());
  m.def("fashion_mnist_classes", &data::fashion_mnist_classes);
  m.attr("FASHION_MNIST_ROOT") = data::kFashionMnistRoot;
  m.def("read_idx", &data::read_idx, py::arg("path"), py::call_guard<py::gil_scoped_release>());

  // random_split's permutation depends on (seed, n) alone, so one over a
  // stand-in dataset of n empty examples splits any dataset of n.
  auto split = [](int64_t n, const auto& sizes, uint64_t seed) {
    auto stand_in = std::make_shared<data::TensorDataset>(empty({n, 0}));
    std::vector<std::vector<int64_t>> out;
    for (const auto& s : data::random_split(stand_in, sizes, seed)) out.push_back(s->indices());
    return out;
  };
  m.def(
      "split_indices",
      [split](int64_t n, const std::vector<int64_t>& lengths, uint64_t seed) { return split(n, lengths, seed); },
      py::arg("n"), py::arg("lengths"), py::arg("seed"));
  m.def(
      "split_indices",
      [split](int64_t n, const std::vector<double>& fractions, uint64_t seed) { return split(n, fractions, seed); },
      py::arg("n"), py::arg("fractions"), py::arg("seed"));
  // The order the C++ loader visits epoch `epoch` in with shuffle.
  m.def(
      "shuffle_indices",
      [](int64_t n, uint64_t seed, int64_t epoch) { return SampleGenerator::for_shuffle(seed, epoch).permutation(n); },
      py::arg("n"), py::arg("seed"), py::arg("epoch"));
  m.def("draw_seed", &draw_seed, py::arg("generator") = py::none());

  // ---- transforms ----
  py::class_<PyTransform>(m, "Transform")
      .def(py::init<const PyTransform&>(), py::arg("transform"))
      // Outside a loader (a dataset's __getitem__) a transform draws from a
      // stream seeded by the global generator, as torchvision's draw from torch's.
      .def(
          "__call__",
          [](const PyTransform& t, Tensor x) {
            SampleGenerator gen(draw_seed(std::nullopt));
            py::gil_scoped_release release;
            return t.fn(Example{std::move(x), Tensor()}, gen).data;
          },
          py::arg("tensor"));
  m.def(
      "normalize",
      [](std::vector<double> mean, std::vector<double> std) {
        return PyTransform{data::Normalize(std::move(mean), std::move(std))};
      },
      py::arg("mean"), py::arg("std"));
  m.def(
      "random_crop",
      [](std::vector<int64_t> size, int64_t padding) {
        LOOM_CHECK(size.size() == 1 || size.size() == 2, "RandomCrop: size is one int or (height, width), got ",
                   size.size(), " values");
        return PyTransform{size.size() == 1 ? data::RandomCrop(size[0], padding)
                                            : data::RandomCrop({size[0], size[1]}, padding)};
      },
      py::arg("size"), py::arg("padding"));
  m.def(
      "random_horizontal_flip", [](double p) { return PyTransform{data::RandomHorizontalFlip(p)}; }, py::arg("p"));
  m.def(
      "compose",
      [](const std::vector<PyTransform>& ts) {
        std::vector<data::Transform> fns;
        for (const PyTransform& t : ts) fns.push_back(t.fn);
        return PyTransform{data::Compose(std::move(fns))};
      },
      py::arg("transforms"));
  m.def(
      "from_callable", [](py::function fn) { return PyTransform{transform_from_callable(std::move(fn))}; },
      py::arg("fn"));

  // ---- samplers ----
  py::class_<data::Sampler, std::shared_ptr<data::Sampler>>(m, "Sampler")
      .def("indices", &data::Sampler::indices, py::arg("epoch"), py::call_guard<py::gil_scoped_release>())
      .def("__len__", &data::Sampler::size);
  py::class_<data::DistributedSampler, data::Sampler, std::shared_ptr<data::DistributedSampler>>(m,
                                                                                                 "DistributedSampler")
      .def(py::init([](int64_t dataset_size, std::optional<int> num_replicas, std::optional<int> rank, bool shuffle,
                       uint64_t seed, bool drop_last) {
             data::DistributedSamplerOptions o;
             o.num_replicas = num_replicas.value_or(-1);
             o.rank = rank.value_or(-1);
             o.shuffle = shuffle;
             o.seed = seed;
             o.drop_last = drop_last;
             return std::make_shared<data::DistributedSampler>(dataset_size, o);
           }),
           py::arg("dataset_size"), py::arg("num_replicas") = py::none(), py::arg("rank") = py::none(),
           py::arg("shuffle") = true, py::arg("seed") = 0, py::arg("drop_last") = false)
      .def_property_readonly("num_replicas", &data::DistributedSampler::num_replicas)
      .def_property_readonly("rank", &data::DistributedSampler::rank)
      .def_property_readonly("total_size", &data::DistributedSampler::total_size);

  // ---- the loader ----
  py::class_<PyBatchIterator>(m, "BatchIterator")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", &PyBatchIterator::next);
  py::class_<PyDataLoader>(m, "DataLoader")
      .def(py::init([](std::shared_ptr<Dataset> dataset, int64_t batch_size, bool shuffle, const py::object& sampler,
                       bool drop_last, int64_t num_workers, uint64_t seed, int64_t prefetch_factor,
                       std::optional<PyTransform> transform) {
             data::DataLoaderOptions o;
             o.batch_size = batch_size;
             o.shuffle = shuffle;
             if (!sampler.is_none()) {
               o.sampler = py::isinstance<data::Sampler>(sampler) ? py::cast<std::shared_ptr<data::Sampler>>(sampler)
                                                                  : std::make_shared<PySampler>(sampler);
             }
             o.drop_last = drop_last;
             o.num_workers = num_workers;
             o.seed = seed;
             o.prefetch_factor = prefetch_factor;
             if (transform) o.transform = transform->fn;
             auto l = std::make_unique<PyDataLoader>();
             l->loader = std::make_unique<data::DataLoader>(std::move(dataset), std::move(o));
             return l;
           }),
           py::arg("dataset"), py::arg("batch_size"), py::arg("shuffle"), py::arg("sampler"), py::arg("drop_last"),
           py::arg("num_workers"), py::arg("seed"), py::arg("prefetch_factor"), py::arg("transform"))
      .def("__len__", [](const PyDataLoader& l) { return l.loader->size(); })
      .def(
          "set_epoch", [](PyDataLoader& l, int64_t e) { l.loader->set_epoch(e); }, py::arg("epoch"))
      // Starts the epoch at the first next(): the iterator keeps the loader alive.
      .def(
          "__iter__", [](PyDataLoader& l) { return std::make_unique<PyBatchIterator>(l.loader.get()); },
          py::keep_alive<0, 1>());

  // ---- text ----
  using data::Tokenizer;
  // Tokenizing a corpus is long work on the CPU: without the GIL too.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer")
      .def("encode", &Tokenizer::encode, py::arg("text"), nogil)
      .def("encode_tensor", &Tokenizer::encode_tensor, py::arg("text"), nogil)
      .def(
          "decode", [](const Tokenizer& t, const Tensor& ids) { return t.decode(ids); }, py::arg("ids"), nogil)
      .def(
          "decode", [](const Tokenizer& t, const std::vector<int64_t>& ids) { return t.decode(ids); }, py::arg("ids"),
          nogil)
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("name", &Tokenizer::name)
      .def("to_json", &Tokenizer::to_json);
  py::class_<data::ByteTokenizer, Tokenizer, std::shared_ptr<data::ByteTokenizer>>(m, "ByteTokenizer")
      .def(py::init<>());
  py::class_<data::CharTokenizer, Tokenizer, std::shared_ptr<data::CharTokenizer>>(m, "CharTokenizer")
      .def(py::init([](const std::u32string& chars) {
             return std::make_shared<data::CharTokenizer>(std::vector<char32_t>(chars.begin(), chars.end()));
           }),
           py::arg("chars"))
      .def_static("from_corpus", &data::CharTokenizer::from_corpus, py::arg("corpus"), nogil)
      .def_property_readonly(
          "chars", [](const data::CharTokenizer& t) { return std::u32string(t.chars().begin(), t.chars().end()); });
  m.def(
      "tokenizer_from_json",
      [](const std::string& json) { return std::shared_ptr<Tokenizer>(data::tokenizer_from_json(json)); },
      py::arg("json"));

  py::class_<data::TextDataset, Dataset, std::shared_ptr<data::TextDataset>>(m, "TextDataset")
      .def(py::init<Tensor, int64_t, std::optional<int64_t>>(), py::arg("ids"), py::arg("context_length"),
           py::arg("stride") = py::none())
      .def(
          "windows",
          [](const data::TextDataset& d, const std::vector<int64_t>& starts) {
            data::Batch b;
            {
              py::gil_scoped_release release;
              b = d.windows(starts);
            }
            return py::make_tuple(wrap(b.data), wrap(b.target));
          },
          py::arg("starts"))
      .def(
          "random_batch",
          [](const data::TextDataset& d, int64_t batch_size, uint64_t seed, int64_t step) {
            data::Batch b;
            {
              py::gil_scoped_release release;
              b = d.random_batch(batch_size, seed, step);
            }
            return py::make_tuple(wrap(b.data), wrap(b.target));
          },
          py::arg("batch_size"), py::arg("seed"), py::arg("step"))
      .def_property_readonly("ids", &data::TextDataset::ids)
      .def_property_readonly("context_length", &data::TextDataset::context_length)
      .def_property_readonly("stride", &data::TextDataset::stride);
  m.def(
      "split_tokens",
      [](const Tensor& ids, double val_fraction, int64_t context_length) {
        data::TokenSplit s = data::split_tokens(ids, val_fraction, context_length);
        return py::make_tuple(wrap(s.train_ids), wrap(s.val_ids));
      },
      py::arg("ids"), py::arg("val_fraction"), py::arg("context_length"));
  m.def("load_fortunes", &data::load_fortunes, py::arg("dir") = data::kFortunesDir, nogil);
  py::class_<data::TextCorpus>(m, "TextCorpus")
      .def_readonly("tokenizer", &data::TextCorpus::tokenizer)
      .def_readonly("train_ids", &data::TextCorpus::train_ids)
      .def_readonly("val_ids", &data::TextCorpus::val_ids)
      .def_readonly("num_bytes", &data::TextCorpus::num_bytes);
  m.def("load_text_corpus", &data::load_text_corpus, py::arg("path"), py::arg("context_length"),
        py::arg("kind") = "char", py::arg("val_fraction") = 0.1, nogil);
}

}  // namespace loom::python
