// An info log that survives a full disk (see InstallLogger in bgerror.go).

#include <rocksdb/env.h>
#include <rocksdb/options.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

#include <memory>
#include <mutex>
#include <string>

#include "bgerror.h"

// The C++ options inside the C API's handle (checked by bgerror.go).
#include "rocksabi.h"

namespace {

// FileLogger appends to one file with stdio. A line that cannot be written
// (ENOSPC) is dropped and the file reopened for the next one; RocksDB's own
// file logger instead remembers the failure and aborts the process on its
// next line (a debug assertion left on in RocksDB 7.8.3 builds). Past
// max_size the file is renamed to path.old and a new one started.
class FileLogger : public rocksdb::Logger {
 public:
  FileLogger(std::string path, long max_size, rocksdb::InfoLogLevel level)
      : rocksdb::Logger(level), path_(std::move(path)), max_size_(max_size) {}

  ~FileLogger() override {
    if (f_ != nullptr) fclose(f_);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    std::lock_guard<std::mutex> l(mu_);
    if (f_ == nullptr) f_ = fopen(path_.c_str(), "a");
    if (f_ == nullptr) return;
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    struct tm t;
    localtime_r(&tv.tv_sec, &t);
    fprintf(f_, "%04d/%02d/%02d-%02d:%02d:%02d.%06ld ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour,
            t.tm_min, t.tm_sec, static_cast<long>(tv.tv_usec));
    vfprintf(f_, format, ap);
    fputc('\n', f_);
    if (fflush(f_) != 0 || ferror(f_)) {
      fclose(f_);
      f_ = nullptr;
      return;
    }
    if (ftell(f_) > max_size_) {
      fclose(f_);
      f_ = nullptr;
      rename(path_.c_str(), (path_ + ".old").c_str());
    }
  }

 private:
  std::mutex mu_;
  std::string path_;
  long max_size_;
  FILE* f_ = nullptr;
};

}  // namespace

extern "C" void edge_set_info_log(void* opts, const char* path, long max_size, int level) {
  static_cast<rocksdb_options_t*>(opts)->rep.info_log =
      std::make_shared<FileLogger>(path, max_size, static_cast<rocksdb::InfoLogLevel>(level));
}
