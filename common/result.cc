#include "common/result.h"

namespace pbrick {

const char* errno_name(int errnum) {
  switch (errnum) {
#define PBRICK_ERRNO_CASE(e) \
  case e:                    \
    return #e;
    PBRICK_ERRNO_CASE(EPERM)
    PBRICK_ERRNO_CASE(ENOENT)
    PBRICK_ERRNO_CASE(EINTR)
    PBRICK_ERRNO_CASE(EIO)
    PBRICK_ERRNO_CASE(E2BIG)
    PBRICK_ERRNO_CASE(EBADF)
    PBRICK_ERRNO_CASE(EAGAIN)
    PBRICK_ERRNO_CASE(ENOMEM)
    PBRICK_ERRNO_CASE(EACCES)
    PBRICK_ERRNO_CASE(EFAULT)
    PBRICK_ERRNO_CASE(EBUSY)
    PBRICK_ERRNO_CASE(EEXIST)
    PBRICK_ERRNO_CASE(ENODEV)
    PBRICK_ERRNO_CASE(EINVAL)
    PBRICK_ERRNO_CASE(EFBIG)
    PBRICK_ERRNO_CASE(ENOSPC)
    PBRICK_ERRNO_CASE(EROFS)
    PBRICK_ERRNO_CASE(EPIPE)
    PBRICK_ERRNO_CASE(ERANGE)
    PBRICK_ERRNO_CASE(ENOSYS)
    PBRICK_ERRNO_CASE(ENOTSUP)
    PBRICK_ERRNO_CASE(EPROTO)
    PBRICK_ERRNO_CASE(EBADMSG)
    PBRICK_ERRNO_CASE(EOVERFLOW)
    PBRICK_ERRNO_CASE(EPROTONOSUPPORT)
    PBRICK_ERRNO_CASE(EADDRINUSE)
    PBRICK_ERRNO_CASE(ECONNRESET)
    PBRICK_ERRNO_CASE(ECONNREFUSED)
    PBRICK_ERRNO_CASE(ETIMEDOUT)
    PBRICK_ERRNO_CASE(ESHUTDOWN)
    PBRICK_ERRNO_CASE(EKEYREJECTED)
    PBRICK_ERRNO_CASE(EUCLEAN)
    PBRICK_ERRNO_CASE(ENOTCONN)
#undef PBRICK_ERRNO_CASE
    default:
      return nullptr;
  }
}

std::string Error::message() const {
  const char* name = errno_name(errnum_);
  std::string out = context_;
  out += ": ";
  out += std::strerror(errnum_);
  out += " (";
  if (name != nullptr) {
    out += name;
  } else {
    out += "E" + std::to_string(errnum_);
  }
  out += ")";
  return out;
}

}  // namespace pbrick
